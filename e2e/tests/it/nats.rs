//! The NATS bus the dataplanes share: the harness starts nats-server and it speaks NATS.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use fleetward_e2e::{Nats, run_test};

/// Reads one protocol line (NATS lines end in CRLF).
fn line(reader: &mut BufReader<TcpStream>) -> Result<String> {
    let mut line = String::new();
    reader
        .read_line(&mut line)
        .context("read from nats-server")?;
    Ok(line.trim_end().to_owned())
}

#[test]
#[ignore = "end-to-end: run by scripts/test.sh"]
fn nats_server_starts_on_a_free_port_and_delivers_a_message() {
    run_test("nats-server", |logs| {
        let nats = Nats::start(logs.path())?;
        ensure!(
            nats.url().ends_with(&format!(":{}", nats.port())),
            "url {}",
            nats.url()
        );
        let stream =
            TcpStream::connect(("127.0.0.1", nats.port())).context("connect to nats-server")?;
        stream.set_read_timeout(Some(Duration::from_secs(5)))?;
        let mut writer = stream.try_clone()?;
        let mut reader = BufReader::new(stream);
        let info = line(&mut reader)?;
        ensure!(
            info.starts_with("INFO {"),
            "nats-server greeted with {info:?}"
        );

        // One connection subscribes and publishes to itself: the server routes it back.
        writer.write_all(b"CONNECT {\"verbose\":false}\r\nSUB m.acme.c.telemetry 1\r\nPUB m.acme.c.telemetry 5\r\nhello\r\nPING\r\n")?;
        let mut got = Vec::new();
        loop {
            let l = line(&mut reader)?;
            if l == "PONG" {
                break;
            }
            got.push(l);
        }
        ensure!(
            got == ["MSG m.acme.c.telemetry 1 5", "hello"],
            "nats-server delivered {got:?}"
        );
        Ok(())
    });
}
