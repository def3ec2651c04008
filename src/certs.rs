//! `fleetward certs`: development certificates for the single-binary mode, from the local CAs
//! `fleetward start` trusts: a tenant's device CA (`<state-dir>/ca/<tenant>/`) for things, and
//! the server CA (`<state-dir>/tls/`) of its TLS listeners.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use clap::{Args, Subcommand};
use fleetward_operator::directory::local_ca::{DAY, LocalCa};

use crate::local::DEFAULT_STATE_DIR;

/// Where `fleetward start` keeps its development server CA, certificate and key.
const SERVER_TLS_DIR: &str = "tls";
/// How long the development server certificate is valid (a new one is made at every start).
const SERVER_DAYS: u32 = 365;

/// `fleetward certs` subcommands.
#[derive(Debug, Args)]
pub struct CertsArgs {
    #[command(subcommand)]
    command: CertsCommand,
}

#[derive(Debug, Subcommand)]
enum CertsCommand {
    /// Write a client certificate and key for a thing, from its tenant's development CA
    /// (created on first use in `<state-dir>/ca/<tenant>/`), and print how to connect with them.
    Issue(IssueArgs),
    /// Print the path of a tenant's development CA certificate (created if absent): for
    /// `--cafile`-style use, or `kubectl create secret generic … --from-file=ca.crt=PATH`.
    Ca(CaArgs),
}

/// `fleetward certs issue` flags.
#[derive(Debug, Args)]
struct IssueArgs {
    /// The thing, as `<tenant>/<thing>`.
    #[arg(value_name = "TENANT/THING")]
    thing: String,
    /// The state directory of `fleetward start`, which holds the tenants' CAs.
    #[arg(long, value_name = "DIR", default_value = DEFAULT_STATE_DIR, env = "FLEETWARD_STATE_DIR")]
    state_dir: PathBuf,
    /// Where `<thing>.crt` and `<thing>.key` (mode 0600) are written.
    #[arg(long, value_name = "DIR", default_value = ".")]
    out: PathBuf,
    /// How long the certificate is valid.
    #[arg(long, value_name = "N", default_value_t = 90, value_parser = clap::value_parser!(u32).range(1..=3650))]
    days: u32,
}

/// `fleetward certs ca` flags.
#[derive(Debug, Args)]
struct CaArgs {
    /// The tenant.
    tenant: String,
    /// The state directory of `fleetward start`, which holds the tenants' CAs.
    #[arg(long, value_name = "DIR", default_value = DEFAULT_STATE_DIR, env = "FLEETWARD_STATE_DIR")]
    state_dir: PathBuf,
}

/// Runs a `fleetward certs` subcommand.
pub fn run(args: &CertsArgs) -> anyhow::Result<()> {
    match &args.command {
        CertsCommand::Issue(a) => issue(a),
        CertsCommand::Ca(a) => {
            dns_label("tenant", &a.tenant)?;
            let ca = tenant_ca(&a.state_dir, &a.tenant)?;
            println!("{}", ca.cert_path().display());
            Ok(())
        }
    }
}

fn issue(args: &IssueArgs) -> anyhow::Result<()> {
    let Some((tenant, thing)) = args.thing.split_once('/') else {
        anyhow::bail!(
            "{:?} is not <tenant>/<thing>; name the thing with its tenant, for example acme/meter-1",
            args.thing
        );
    };
    dns_label("tenant", tenant)?;
    dns_label("thing", thing)?;
    let ca = tenant_ca(&args.state_dir, tenant)?;
    let issued = ca
        .issue_thing(tenant, thing, thing, DAY * args.days)
        .context("issuing the certificate")?;
    let (cert, key) = issued.write(&args.out, thing).with_context(|| {
        format!(
            "writing the certificate and key into {}; pass a writable --out DIR",
            args.out.display()
        )
    })?;
    let server_ca = args.state_dir.join(SERVER_TLS_DIR).join("ca.crt");
    println!("certificate: {}", cert.display());
    println!("key:         {}", key.display());
    println!("serial:      {}", issued.facts.serial);
    println!("tenant CA:   {}", ca.cert_path().display());
    println!(
        "valid for {} days; it names {tenant}/{thing} by its URI fleetward://{tenant}/{thing}",
        args.days
    );
    println!();
    println!(
        "Publish with it (`fleetward start --mqtts-listen 127.0.0.1:8883`; CHANNEL: a channel \
         the thing may publish on):"
    );
    println!(
        "mosquitto_pub -h localhost -p 8883 --cafile {} --cert {} --key {} -t m/{tenant}/c/CHANNEL -m hello",
        shell_word(&server_ca),
        shell_word(&cert),
        shell_word(&key),
    );
    Ok(())
}

/// The tenant's development CA, created on first use.
fn tenant_ca(state_dir: &Path, tenant: &str) -> anyhow::Result<LocalCa> {
    let (ca, created) = LocalCa::tenant(state_dir, tenant).with_context(|| {
        format!(
            "opening tenant {tenant}'s development CA under {}; pass the --state-dir of \
             `fleetward start`",
            state_dir.display()
        )
    })?;
    if created {
        eprintln!(
            "created tenant {tenant}'s development CA: {}",
            ca.cert_path().display()
        );
    }
    Ok(ca)
}

/// The development server certificate and key of `fleetward start`'s TLS listeners, signed by
/// `<state-dir>/tls/ca.crt` (what clients pass as `--cafile`), made anew for `hosts`.
pub fn development_server_certificate(
    state_dir: &Path,
    hosts: &[&str],
) -> anyhow::Result<(PathBuf, PathBuf, PathBuf)> {
    let dir = state_dir.join(SERVER_TLS_DIR);
    let (ca, _) = LocalCa::open_or_create(&dir, "Fleetward development server CA")
        .context("opening the development server CA; pass --tls-cert and --tls-key instead")?;
    let issued = ca
        .issue_server(hosts, DAY * SERVER_DAYS)
        .context("issuing the development server certificate")?;
    let (cert, key) = issued
        .write(&dir, "server")
        .context("writing the development server certificate")?;
    Ok((ca.cert_path(), cert, key))
}

/// Refuses a name that is not a DNS label (what tenants and things are named by).
fn dns_label(what: &str, name: &str) -> anyhow::Result<()> {
    if !fleetward_policy::is_dns_label(name) {
        anyhow::bail!(
            "{what} {name:?} is not a DNS label: 1 to 63 lower-case letters, digits or '-', \
             starting and ending with a letter or digit"
        );
    }
    Ok(())
}

/// A path as one shell word: quoted when it holds anything but plain characters.
fn shell_word(path: &Path) -> String {
    let text = path.display().to_string();
    if text
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "/._-+:=@%".contains(c))
    {
        text
    } else {
        format!("'{}'", text.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_that_are_not_dns_labels_are_refused() {
        for bad in ["", "Acme", "-a", "a-", "a_b", "a.b", &"a".repeat(64)] {
            assert!(dns_label("thing", bad).is_err(), "{bad:?}");
        }
        for good in ["a", "meter-1", "0x", &"a".repeat(63)] {
            assert!(dns_label("thing", good).is_ok(), "{good:?}");
        }
    }

    #[test]
    fn a_path_with_spaces_is_quoted_for_the_shell() {
        assert_eq!(shell_word(Path::new("./a.crt")), "./a.crt");
        assert_eq!(shell_word(Path::new("my dir/a.crt")), "'my dir/a.crt'");
    }
}
