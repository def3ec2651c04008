//! The protobuf compatibility test: the current .proto files against the newest release
//! baseline in `compat/<version>/` (compat/README.md), and the rules' own tests.
//!
//! `record_descriptor_set` is how scripts/release.sh writes a baseline's descriptor set.

mod rules;

use std::path::{Path, PathBuf};

use prost_reflect::DescriptorPool;
use protox::Compiler;
use protox::file::{File, FileResolver};

/// The baseline's descriptor set, inside `compat/<version>/`.
const DESCRIPTOR_SET: &str = "descriptor-set.binpb";

fn crate_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Every .proto file under `root`, so a new file joins the check without a list to edit.
fn proto_files(root: &Path) -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for entry in entries.filter_map(Result::ok) {
            let path = entry.path();
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if path.is_dir() && !name.starts_with('.') && name != "target" {
                walk(&path, out);
            } else if name.ends_with(".proto") {
                out.push(path);
            }
        }
    }
    let mut out = Vec::new();
    walk(root, &mut out);
    out.sort();
    out
}

/// Compiles every .proto file under `root` (its own include path) into a descriptor set,
/// imports included and comments left out: the wire contract, not the prose.
fn compile(root: &Path) -> Result<Compiler, String> {
    let files = proto_files(root);
    if files.is_empty() {
        return Err(format!("no .proto files under {}", root.display()));
    }
    let mut compiler = Compiler::new([root]).map_err(|e| e.to_string())?;
    compiler.include_imports(true).include_source_info(false);
    compiler.open_files(&files).map_err(|e| format!("{e:?}"))?;
    Ok(compiler)
}

#[path = "../../../../compat/baseline.rs"]
mod baseline;
use baseline::{newest_baseline, parse_version};

#[test]
fn the_proto_files_are_compatible_with_the_newest_baseline() {
    let compat = crate_dir().join("../compat");
    let Some((version, file)) = newest_baseline(&compat, DESCRIPTOR_SET) else {
        panic!(
            "no baseline in {}: record one with `scripts/release.sh --record-only VERSION`",
            compat.display()
        );
    };
    let bytes = std::fs::read(&file)
        .unwrap_or_else(|e| panic!("cannot read the baseline {}: {e}", file.display()));
    let baseline = DescriptorPool::decode(bytes.as_slice())
        .unwrap_or_else(|e| panic!("the baseline {} does not decode: {e}", file.display()));
    let current = compile(&crate_dir())
        .unwrap_or_else(|e| panic!("the .proto files do not compile: {e}"))
        .descriptor_pool();

    let breaks = rules::breaks(&baseline, &current);
    assert!(
        breaks.is_empty(),
        "the .proto files break compatibility with release {version} (compat/{version}/):\n{}\
         Mixed operator and dataplane versions must keep talking during a rolling upgrade; \
         see docs/upgrades.md for how to add, deprecate and remove a field.",
        rules::report(&breaks)
    );
}

/// Writes the descriptor set of `$FLEETWARD_COMPAT_PROTO_ROOT` (default: this crate) to
/// `$FLEETWARD_COMPAT_OUT`. scripts/release.sh runs it; it is not a check.
#[test]
#[ignore = "scripts/release.sh runs it to record a baseline"]
fn record_descriptor_set() {
    let root =
        std::env::var_os("FLEETWARD_COMPAT_PROTO_ROOT").map_or_else(crate_dir, PathBuf::from);
    let out = std::env::var_os("FLEETWARD_COMPAT_OUT")
        .map(PathBuf::from)
        .expect("set FLEETWARD_COMPAT_OUT to the descriptor set file to write");
    let compiler =
        compile(&root).unwrap_or_else(|e| panic!("the .proto files do not compile: {e}"));
    std::fs::write(&out, compiler.encode_file_descriptor_set())
        .unwrap_or_else(|e| panic!("cannot write {}: {e}", out.display()));
}

/// One inline .proto file, `test.proto`, for the rules' tests.
struct Inline(String);

impl FileResolver for Inline {
    fn open_file(&self, name: &str) -> Result<File, protox::Error> {
        if name == "test.proto" {
            File::from_source(name, &self.0)
        } else {
            Err(protox::Error::file_not_found(name))
        }
    }
}

fn pool(source: &str) -> DescriptorPool {
    let mut compiler = Compiler::with_file_resolver(Inline(source.to_owned()));
    compiler
        .open_file("test.proto")
        .unwrap_or_else(|e| panic!("the test's .proto does not compile: {e:?}"));
    compiler.descriptor_pool()
}

const BASE: &str = r#"
syntax = "proto3";
package t.v1;
service Sync { rpc Stream(stream Hello) returns (stream Tenant); }
message Hello { string node_id = 1; uint64 version = 2; }
message Tenant {
  string name = 1;
  repeated string channels = 2;
  Mode mode = 3;
  map<string, string> labels = 4;
  reserved 9;
}
enum Mode { MODE_UNSPECIFIED = 0; MODE_OPEN = 1; MODE_CLOSED = 2; }
"#;

/// BASE with each `(from, to)` applied in turn; each `from` must occur exactly once, so that a
/// fixture cannot silently be BASE itself.
fn base_with(edits: &[(&str, &str)]) -> String {
    edits.iter().fold(BASE.to_owned(), |text, (from, to)| {
        assert_eq!(
            text.matches(from).count(),
            1,
            "{from:?} is once in the fixture"
        );
        text.replacen(from, to, 1)
    })
}

/// The one report line of a change from BASE to `changed`.
fn only_break(changed: &str) -> String {
    let breaks = rules::breaks(&pool(BASE), &pool(changed));
    assert_eq!(
        breaks.len(),
        1,
        "expected one break, got:\n{}",
        rules::report(&breaks)
    );
    rules::report(&breaks)
}

#[test]
fn additions_are_compatible() {
    let grown = r#"
syntax = "proto3";
package t.v1;
service Sync {
  rpc Stream(stream Hello) returns (stream Tenant);
  rpc Probe(Hello) returns (Hello);
}
service Other { rpc Ping(Hello) returns (Hello); }
message Hello { string node_id = 1; uint64 version = 2; string software_version = 3; }
message Tenant {
  string name = 1;
  repeated string channels = 2;
  Mode mode = 3;
  map<string, string> labels = 4;
  Web web = 5;
  reserved 9;
  message Web { bool enabled = 1; }
}
message Extra { oneof kind { string a = 1; uint32 b = 2; } }
enum Mode { MODE_UNSPECIFIED = 0; MODE_OPEN = 1; MODE_CLOSED = 2; MODE_DRAINING = 3; }
"#;
    let breaks = rules::breaks(&pool(BASE), &pool(grown));
    assert!(
        breaks.is_empty(),
        "additions were refused:\n{}",
        rules::report(&breaks)
    );
    assert!(rules::breaks(&pool(BASE), &pool(BASE)).is_empty());
}

#[test]
fn a_removed_field_needs_reserved() {
    let removed = base_with(&[("  repeated string channels = 2;\n", "")]);
    let report = only_break(&removed);
    assert!(
        report.contains("t.v1.Tenant.channels (field 2): field removed without `reserved`")
            && report.contains("reserved 2; reserved \"channels\";"),
        "{report}"
    );

    let reserved = base_with(&[
        ("  repeated string channels = 2;\n", ""),
        ("  reserved 9;", "  reserved 2, 9; reserved \"channels\";"),
    ]);
    let breaks = rules::breaks(&pool(BASE), &pool(&reserved));
    assert!(breaks.is_empty(), "{}", rules::report(&breaks));
}

#[test]
fn a_reused_field_number_is_refused() {
    let reused = base_with(&[("  reserved 9;", "  string old = 9;")]);
    let report = only_break(&reused);
    assert!(
        report.contains("t.v1.Tenant.old (field 9): reuses number 9, which the baseline reserved"),
        "{report}"
    );

    let renamed = base_with(&[("uint64 version = 2", "uint64 build = 2")]);
    let report = only_break(&renamed);
    assert!(
        report.contains("t.v1.Hello.version (field 2): number 2 now belongs to `build`"),
        "{report}"
    );
}

#[test]
fn a_renumbered_field_is_refused() {
    let renumbered = base_with(&[("uint64 version = 2", "uint64 version = 7")]);
    let report = only_break(&renumbered);
    assert!(
        report.contains("t.v1.Hello.version (field 2): renumbered to 7"),
        "{report}"
    );
}

#[test]
fn a_changed_type_or_cardinality_is_refused() {
    let retyped = base_with(&[("uint64 version = 2", "string version = 2")]);
    let report = only_break(&retyped);
    assert!(
        report.contains("t.v1.Hello.version (field 2): type changed from uint64 to string"),
        "{report}"
    );

    let made_singular = base_with(&[("repeated string channels", "string channels")]);
    let report = only_break(&made_singular);
    assert!(
        report.contains(
            "t.v1.Tenant.channels (field 2): cardinality changed from repeated to singular"
        ),
        "{report}"
    );
}

#[test]
fn a_renumbered_or_removed_enum_value_is_refused() {
    let renumbered = base_with(&[("MODE_CLOSED = 2", "MODE_CLOSED = 5")]);
    let report = only_break(&renumbered);
    assert!(
        report.contains("t.v1.Mode.MODE_CLOSED (value 2): renumbered to 5"),
        "{report}"
    );

    let removed = base_with(&[(" MODE_CLOSED = 2;", "")]);
    let report = only_break(&removed);
    assert!(
        report.contains("t.v1.Mode.MODE_CLOSED (value 2): enum value removed without `reserved`"),
        "{report}"
    );
}

#[test]
fn a_removed_method_service_or_message_is_refused() {
    let no_method = base_with(&[(
        "rpc Stream(stream Hello) returns (stream Tenant);",
        "rpc Other(Hello) returns (Hello);",
    )]);
    let report = only_break(&no_method);
    assert!(
        report.contains("t.v1.Sync.Stream: method removed"),
        "{report}"
    );

    let no_service = base_with(&[(
        "service Sync { rpc Stream(stream Hello) returns (stream Tenant); }\n",
        "",
    )]);
    let report = only_break(&no_service);
    assert!(report.contains("t.v1.Sync: service removed"), "{report}");

    let unary = base_with(&[("rpc Stream(stream Hello)", "rpc Stream(Hello)")]);
    let report = only_break(&unary);
    assert!(
        report.contains("t.v1.Sync.Stream: signature changed from (stream t.v1.Hello)"),
        "{report}"
    );

    // Tenant goes, so the method that returns it must change too: two breaks, both named.
    let no_message = base_with(&[
        ("returns (stream Tenant)", "returns (stream Hello)"),
        (
            "message Tenant {\n  string name = 1;\n  repeated string channels = 2;\n  Mode mode = 3;\n  map<string, string> labels = 4;\n  reserved 9;\n}\n",
            "",
        ),
    ]);
    let report = rules::report(&rules::breaks(&pool(BASE), &pool(&no_message)));
    assert!(report.contains("t.v1.Tenant: message removed"), "{report}");
    assert!(
        report.contains("t.v1.Sync.Stream: signature changed"),
        "{report}"
    );
}

#[test]
fn the_newest_baseline_is_chosen_by_version_not_by_name() {
    assert_eq!(parse_version("0.10.0"), Some((0, 10, 0)));
    assert!(parse_version("0.10.0") > parse_version("0.9.3"));
    assert_eq!(parse_version("README.md"), None);
    assert_eq!(parse_version("1.2"), None);
    assert_eq!(parse_version("1.2.3.4"), None);
}
