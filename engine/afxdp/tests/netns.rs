//! Real-kernel tests: a veth pair between two private network namespaces, the XDP program
//! on one end, an AF_XDP echo on its queue 0, kernel UDP sockets and ping on the other.
//!
//! They need root (CAP_NET_ADMIN, CAP_BPF, CAP_IPC_LOCK) and `ip` / `ping`; without root
//! each test prints why it is skipped and passes. Namespaces are named with the pid and a
//! per-test tag and deleted in Drop, even when an assertion fails.
#![cfg(target_os = "linux")]

use std::io::{BufRead, BufReader};
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::process::{Command, Stdio};
use std::time::Duration;

use earshot_afxdp::frame::{UdpHeaders, parse_udp};
use earshot_afxdp::{
    AfXdpError, AttachMode, NeighborTable, XdpFilter, XdpProgram, XskConfig, XskSocket,
};
use earshot_testkit::netns::{self, VethConfig, VethPair, require_root};

const A_V4: &str = "10.77.0.1";
const B_V4: &str = "10.77.0.2";
const A_OTHER_V4: &str = "10.77.0.9"; // local to A but not in the filter
const A_V6: &str = "fd4d::1";
const RANGE: (u16, u16) = (20000, 20099);

/// Two namespaces joined by a veth pair: `va` (A, 10.77.0.1 + .9, fd4d::1) and `vb`
/// (B, 10.77.0.2, fd4d::2).
fn veth(tag: &str) -> VethPair {
    let mut cfg = VethConfig {
        prefix_a: "exa",
        prefix_b: "exb",
        dev_a: "va",
        dev_b: "vb",
        ..VethConfig::dual(77)
    };
    cfg.v4_a.push(A_OTHER_V4.parse().unwrap());
    VethPair::new(tag, cfg).expect("veth pair")
}

fn small_config() -> XskConfig {
    XskConfig {
        frame_count: 1024,
        fill_ring_size: 512,
        completion_ring_size: 512,
        rx_ring_size: 512,
        tx_ring_size: 512,
        ..XskConfig::default()
    }
}

/// Sends `count` datagrams from side B to `to`, in windows of 32, and counts the echoes
/// that come back with the same payload.
fn udp_client(net: &VethPair, to: SocketAddr, count: usize) -> std::thread::JoinHandle<usize> {
    net.b.spawn(move || {
        let bind: SocketAddr = if to.is_ipv4() {
            "0.0.0.0:0".parse().unwrap()
        } else {
            "[::]:0".parse().unwrap()
        };
        let sock = UdpSocket::bind(bind).unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        let mut echoed = 0;
        let mut buf = [0u8; 2048];
        for window in (0..count).collect::<Vec<_>>().chunks(32) {
            for &i in window {
                sock.send_to(format!("rtp-{i:05}").as_bytes(), to).unwrap();
            }
            for _ in window {
                match sock.recv_from(&mut buf) {
                    Ok((n, from)) if from == to && buf[..n].starts_with(b"rtp-") => echoed += 1,
                    Ok(_) => {}
                    Err(_) => break,
                }
            }
        }
        echoed
    })
}

/// Echoes every UDP frame the socket receives back to its sender until `done` says stop.
fn run_echo(xsk: &mut XskSocket, done: impl Fn() -> bool) -> usize {
    let mut echoed = 0;
    let mut ident = earshot_afxdp::frame::Ipv4Ident::new(1);
    let mut replies: Vec<(UdpHeaders, Vec<u8>)> = Vec::new();
    while !done() {
        xsk.wait_readable(10);
        xsk.recv_batch(64, |frame| {
            if let Ok(rx) = parse_udp(frame) {
                replies.push((UdpHeaders::reply_to(&rx), frame[rx.payload].to_vec()));
            }
        });
        for (headers, payload) in replies.drain(..) {
            let id = ident.next_id();
            let sent = xsk.send_with(2048, |buf| {
                let at = headers.header_len();
                buf[at..at + payload.len()].copy_from_slice(&payload);
                headers.emit(buf, payload.len(), 1500, id).unwrap_or(0)
            });
            echoed += usize::from(sent);
        }
        xsk.flush();
    }
    echoed
}

#[test]
fn in_range_udp_is_echoed_through_afxdp_and_everything_else_reaches_the_kernel_native() {
    if !require_root("echo test (native)") {
        return;
    }
    echo_and_pass(AttachMode::Native, "echon");
}

#[test]
fn in_range_udp_is_echoed_through_afxdp_and_everything_else_reaches_the_kernel_generic() {
    if !require_root("echo test (generic)") {
        return;
    }
    echo_and_pass(AttachMode::Generic, "echog");
}

fn echo_and_pass(mode: AttachMode, tag: &str) {
    let net = veth(tag);
    net.a.enter().expect("enter A");
    let addrs: Vec<IpAddr> = vec![A_V4.parse().unwrap(), A_V6.parse().unwrap()];
    let program = XdpProgram::attach(
        "va",
        &XdpFilter {
            port_ranges: &[RANGE],
            addrs: &addrs,
        },
        mode,
    )
    .expect("attach");
    println!("attached in {:?} mode", program.mode());
    let expected = match mode {
        AttachMode::Generic => earshot_afxdp::AttachedMode::Generic,
        _ => earshot_afxdp::AttachedMode::Native,
    };
    assert_eq!(program.mode(), expected, "veth supports both modes");
    let mut xsk = XskSocket::open("va", 0, &small_config()).expect("open xsk");
    println!("xsk bound in {:?} mode", xsk.mode());
    xsk.register(&program).expect("register");

    // Kernel sockets in A: one out of range, one in range but on an address not in the filter.
    let out_of_range = UdpSocket::bind((A_V4, 30000)).unwrap();
    let other_addr = UdpSocket::bind((A_OTHER_V4, RANGE.0 + 10)).unwrap();
    for s in [&out_of_range, &other_addr] {
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    }

    const N: usize = 300;
    let v4 = udp_client(
        &net,
        (A_V4.parse::<IpAddr>().unwrap(), RANGE.0 + 10).into(),
        N,
    );
    let v6 = udp_client(&net, (A_V6.parse::<IpAddr>().unwrap(), RANGE.1).into(), N);
    let echoed = run_echo(&mut xsk, || v4.is_finished() && v6.is_finished());
    let (v4_echoes, v6_echoes) = (v4.join().unwrap(), v6.join().unwrap());
    assert_eq!(v4_echoes, N, "every IPv4 datagram came back");
    assert_eq!(v6_echoes, N, "every IPv6 datagram came back");
    assert_eq!(echoed, 2 * N);

    // Out of range and not-our-address traffic goes to the kernel stack.
    net.b.run(|| {
        let s = UdpSocket::bind("0.0.0.0:0").unwrap();
        s.send_to(b"kernel-port", (A_V4, 30000)).unwrap();
        s.send_to(b"kernel-addr", (A_OTHER_V4, RANGE.0 + 10))
            .unwrap();
    });
    let mut buf = [0u8; 64];
    let (n, _) = out_of_range
        .recv_from(&mut buf)
        .expect("out-of-range port reaches the kernel");
    assert_eq!(&buf[..n], b"kernel-port");
    let (n, _) = other_addr
        .recv_from(&mut buf)
        .expect("address outside the filter reaches the kernel");
    assert_eq!(&buf[..n], b"kernel-addr");
    let ping = net
        .b
        .command("ping")
        .args(["-c", "2", "-i", "0.2", "-W", "1", A_V4])
        .output()
        .expect("ping");
    assert!(
        ping.status.success(),
        "ping through the XDP program: {ping:?}"
    );

    let c = program.counters();
    println!("{c:?}");
    assert!(c.redirected >= 2 * N as u64, "{c:?}");
    assert!(c.pass_not_our_port >= 1, "{c:?}");
    assert!(c.pass_not_our_addr >= 1, "{c:?}");
    assert!(c.pass_not_udp >= 2, "ICMP echo requests: {c:?}");
    assert_eq!(c.pass_no_xsk, 0, "{c:?}");

    // No frame leaked: every TX frame completes and returns to the free stack.
    for _ in 0..100 {
        xsk.flush();
        if xsk.tx_in_flight() == 0 {
            break;
        }
        xsk.wait_readable(5);
    }
    let (kernel, free, pending, in_tx) = xsk.frame_census();
    assert_eq!((pending, in_tx), (0, 0));
    assert_eq!(kernel + free, 1024);
    assert_eq!(xsk.stats().bad_descriptors, 0);
}

#[test]
#[ignore = "child process of sigkill_of_the_owner_detaches_the_program"]
fn sigkill_child_holds_a_program_and_socket_until_killed() {
    let Ok(ns) = std::env::var("EARSHOT_XDP_CHILD_NS") else {
        return;
    };
    netns::enter(&ns).expect("enter the parent's namespace");
    let program = XdpProgram::attach(
        "va",
        &XdpFilter {
            port_ranges: &[RANGE],
            addrs: &[A_V4.parse().unwrap()],
        },
        AttachMode::Auto,
    )
    .expect("child attach");
    let xsk = XskSocket::open("va", 0, &small_config()).expect("child xsk");
    xsk.register(&program).expect("child register");
    println!("CHILD-READY");
    // Never read the socket: in-range traffic is swallowed until the process dies.
    // Block on stdin (the parent never writes) rather than sleeping.
    let mut line = String::new();
    let _ = std::io::stdin().read_line(&mut line);
    drop((xsk, program));
}

#[test]
fn sigkill_of_the_owner_detaches_the_program() {
    if !require_root("sigkill test") {
        return;
    }
    let net = veth("kill");
    net.a.enter().expect("enter A");
    let kernel_sock = UdpSocket::bind((A_V4, RANGE.0 + 20)).unwrap();
    kernel_sock
        .set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();

    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "sigkill_child_holds_a_program_and_socket_until_killed",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("EARSHOT_XDP_CHILD_NS", net.a.name())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn child");
    let stdout = child.stdout.take().unwrap();
    let mut ready = false;
    for line in BufReader::new(stdout).lines() {
        let line = line.unwrap();
        if line.contains("CHILD-READY") {
            ready = true;
            break;
        }
    }
    assert!(ready, "child attached and printed CHILD-READY");
    assert!(net.xdp_attached_a().unwrap());

    let send_from_b = |tag: &'static str| {
        net.b.run(|| {
            let s = UdpSocket::bind("0.0.0.0:0").unwrap();
            for _ in 0..3 {
                s.send_to(tag.as_bytes(), (A_V4, RANGE.0 + 20)).unwrap();
            }
        });
    };
    let mut buf = [0u8; 64];
    send_from_b("while-alive");
    assert!(
        kernel_sock.recv_from(&mut buf).is_err(),
        "while the child lives, in-range traffic goes to its (unread) socket"
    );

    child.kill().expect("SIGKILL the child");
    child.wait().unwrap();
    assert!(
        !net.xdp_attached_a().unwrap(),
        "the bpf_link died with the child"
    );
    send_from_b("after-kill");
    let (n, _) = kernel_sock
        .recv_from(&mut buf)
        .expect("after SIGKILL the traffic reaches the kernel again");
    assert_eq!(&buf[..n], b"after-kill");
}

#[test]
#[allow(clippy::disallowed_methods)] // polls the kernel's neighbour table in real time
fn neighbour_miss_triggers_resolution_and_then_resolves_to_the_peer_mac() {
    if !require_root("neighbour test") {
        return;
    }
    let net = veth("neigh");
    net.a.enter().expect("enter A");
    let table = NeighborTable::start(1000).expect("neighbour table");
    let reader = table.reader();
    let b: IpAddr = B_V4.parse().unwrap();
    assert_eq!(
        reader.lookup(b),
        None,
        "fresh namespace: nothing resolved yet"
    );
    assert_eq!(
        reader.lookup("192.0.2.1".parse().unwrap()),
        None,
        "no route"
    );
    let mut hop = None;
    for _ in 0..200 {
        hop = reader.lookup(b);
        if hop.is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let hop = hop.expect("resolved within 2 s of the miss");
    assert_eq!(hop.dst_mac, net.mac_b().unwrap());
    assert_eq!(hop.src_mac, net.mac_a().unwrap());
    assert_eq!(hop.via, b);
    assert_eq!(hop.mtu, 1500);
}

#[test]
fn missing_interface_is_reported_by_name() {
    if !require_root("missing interface test") {
        return;
    }
    let filter = XdpFilter {
        port_ranges: &[RANGE],
        addrs: &[],
    };
    let err = XdpProgram::attach("nosuchif0", &filter, AttachMode::Auto).unwrap_err();
    assert!(matches!(err, AfXdpError::InterfaceNotFound { .. }), "{err}");
    let err = XskSocket::open("nosuchif0", 0, &small_config()).unwrap_err();
    assert!(matches!(err, AfXdpError::InterfaceNotFound { .. }), "{err}");
}
