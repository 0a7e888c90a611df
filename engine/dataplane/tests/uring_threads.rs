//! The io_uring backend is built on one thread and driven on another, as the engine
//! builds it on the control thread and moves it to the shard thread. Where the kernel
//! defers task work the ring belongs to one submitting thread: the backend must hand it
//! to the thread that first uses it, and that thread must then receive (through the
//! batched wait), echo and close ports as on any other ring.
#![allow(clippy::disallowed_methods)] // real sockets: the test thread times its own loop

use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::time::{Duration as StdDuration, Instant as StdInstant};

use earshot_engine::backend::Backend;
use earshot_engine::backend::uring::{UringBackend, UringConfig};
use earshot_engine::clock::Clock;
use earshot_engine_api::IpFamily;
use earshot_testkit::handler::Echo;
use earshot_types::time::Duration;

fn free_port() -> u16 {
    let s = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind an ephemeral port");
    s.local_addr().expect("local address").port()
}

#[test]
fn a_backend_built_on_one_thread_receives_and_echoes_on_another() {
    let backend = match UringBackend::new(UringConfig {
        bind_v4: Some(Ipv4Addr::LOCALHOST),
        buffers: 256,
        tx_slots: 256,
        ..UringConfig::default()
    }) {
        Ok(b) => b,
        Err(e) => {
            println!("SKIPPED: io_uring cannot start here: {e}");
            return;
        }
    };
    let port = free_port();
    let target = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let client = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).expect("client socket");
    client
        .set_read_timeout(Some(StdDuration::from_secs(2)))
        .expect("read timeout");
    const N: usize = 40;
    let sender = client.try_clone().expect("clone client");
    let worker = std::thread::spawn(move || {
        let mut backend = backend;
        backend.open_port(port, IpFamily::V4).expect("open a port");
        // Datagrams start once the port is open; the worker must wake for them.
        for i in 0..N {
            sender
                .send_to(format!("d{i}").as_bytes(), target)
                .expect("send");
        }
        let clock = Clock::new();
        let mut echo = Echo::default();
        let started = StdInstant::now();
        while echo.handed.len() < N && started.elapsed() < StdDuration::from_secs(5) {
            let now = clock.now();
            backend
                .wait(now, now + Duration::from_millis(100))
                .expect("wait");
            backend.poll_recv(64, &mut echo).expect("receive");
            backend.flush().expect("flush");
        }
        backend.close_port(port);
        let counters = Backend::counters(&backend);
        (echo, counters)
    });
    let (echo, counters) = worker.join().expect("the worker thread");
    assert_eq!(
        echo.handed.len(),
        N,
        "every datagram reached the other thread"
    );
    assert_eq!(echo.refused, 0);
    let mut answers = Vec::new();
    let mut buf = [0u8; 64];
    for _ in 0..N {
        let (n, from) = client.recv_from(&mut buf).expect("an echo");
        assert_eq!(from, target);
        answers.push(String::from_utf8_lossy(&buf[..n]).into_owned());
    }
    answers.sort();
    let mut sent: Vec<String> = (0..N).map(|i| format!("d{i}")).collect();
    sent.sort();
    assert_eq!(answers, sent, "each datagram echoed once, unchanged");
    let count = |name: &str| {
        counters
            .iter()
            .find(|(k, _)| *k == name)
            .map_or(0, |(_, v)| *v)
    };
    assert_eq!(count("rx_datagrams"), N as u64);
    assert_eq!(count("tx_errors"), 0);
    assert_eq!(count("rx_errors"), 0);
}
