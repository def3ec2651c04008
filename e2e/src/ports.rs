//! Free loopback ports, and waiting for a server to accept connections on one.

use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// A port on 127.0.0.1 that nothing listens on right now.
///
/// Another process may take it before the caller binds it; the window is small
/// and tests bind at once.
pub fn free_port() -> Result<u16> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .context("bind 127.0.0.1:0 to find a free port")?;
    Ok(listener
        .local_addr()
        .context("read the address of a bound socket")?
        .port())
}

/// `N` distinct free ports on 127.0.0.1, for one process that listens on several. All are
/// held until all are picked: released one by one, the kernel may hand the same port out
/// twice (an operator once got one port for both its gRPC and admin listeners).
pub fn free_ports<const N: usize>() -> Result<[u16; N]> {
    let listeners = (0..N)
        .map(|_| {
            TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
                .context("bind 127.0.0.1:0 to find a free port")
        })
        .collect::<Result<Vec<_>>>()?;
    let mut ports = [0; N];
    for (port, l) in ports.iter_mut().zip(&listeners) {
        *port = l
            .local_addr()
            .context("read the address of a bound socket")?
            .port();
    }
    Ok(ports)
}

/// `127.0.0.1:<port>`.
pub fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, port))
}

/// Waits until a TCP connection to `addr` succeeds.
pub fn wait_for_listener(addr: SocketAddr, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!("nothing accepted connections on {addr} within {timeout:?}");
        }
        thread::sleep(Duration::from_millis(50));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_free_port_can_be_bound_and_is_then_seen_listening() -> Result<()> {
        let port = free_port()?;
        let listener = TcpListener::bind(loopback(port))?;
        wait_for_listener(loopback(port), Duration::from_secs(5))?;
        drop(listener);
        Ok(())
    }

    #[test]
    fn ports_picked_together_are_distinct() -> Result<()> {
        for _ in 0..50 {
            let [a, b, c] = free_ports::<3>()?;
            assert!(a != b && b != c && a != c, "{a} {b} {c}");
        }
        Ok(())
    }

    #[test]
    fn waiting_on_a_closed_port_times_out() -> Result<()> {
        let port = free_port()?;
        let err = wait_for_listener(loopback(port), Duration::from_millis(300))
            .expect_err("nothing listens on a port just released");
        assert!(err.to_string().contains("within"), "{err:#}");
        Ok(())
    }
}
