//! The `earshot-engine` process: it serves the versioned programming protocol on its Unix
//! socket, refuses a client that speaks another version, and stops cleanly on SIGTERM.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use earshot_engine_api::protocol::{ClientFrame, Hello, ServerFrame, read_frame, write_frame};
use earshot_engine_api::{IpFamily, Request, Response};

struct Engine {
    child: Child,
    socket: PathBuf,
    _dir: PathBuf,
}

impl Drop for Engine {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self._dir);
    }
}

/// Starts the engine on the socket backend with its API socket in a fresh directory.
#[allow(clippy::disallowed_methods)] // Waits for a real process in real time.
fn start(port_base: u16) -> Engine {
    let dir = std::env::temp_dir().join(format!(
        "earshot-engine-test-{}-{port_base}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let socket = dir.join("engine.sock");
    let child = Command::new(env!("CARGO_BIN_EXE_earshot-engine"))
        .args([
            "--backend",
            "socket",
            "--no-fallback",
            "--no-pin",
            "--ports-per-shard",
            "1024",
        ])
        .args(["--port-base", &port_base.to_string()])
        .arg("--socket")
        .arg(&socket)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !socket.exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "engine socket never appeared"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    Engine {
        child,
        socket,
        _dir: dir,
    }
}

fn connect(path: &Path) -> UnixStream {
    let s = UnixStream::connect(path).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s
}

#[test]
fn the_engine_serves_the_protocol_and_refuses_another_version() {
    let engine = start(26624);
    // A client of another protocol version gets the engine's hello, then the door.
    let mut old = connect(&engine.socket);
    write_frame(
        &mut old,
        &Hello {
            version: 999,
            ..Hello::current()
        },
    )
    .unwrap();
    let hello: Hello = read_frame(&mut old).unwrap().unwrap();
    assert_eq!(
        hello.version,
        earshot_engine_api::protocol::PROTOCOL_VERSION
    );
    let mut rest = Vec::new();
    let _ = old.read_to_end(&mut rest);
    assert!(rest.is_empty(), "no reply after a refused handshake");

    // The right version: allocate a leg and read stats.
    let mut c = connect(&engine.socket);
    write_frame(&mut c, &Hello::current()).unwrap();
    let _: Hello = read_frame(&mut c).unwrap().unwrap();
    let call = |c: &mut UnixStream, id, request| {
        write_frame(c, &ClientFrame::Call { id, request }).unwrap();
        c.flush().unwrap();
        loop {
            match read_frame::<_, ServerFrame>(c).unwrap().unwrap() {
                ServerFrame::Reply { id: got, result } => {
                    assert_eq!(got, id);
                    return result;
                }
                ServerFrame::Event(_) => continue,
            }
        }
    };
    let leg = call(
        &mut c,
        1,
        Request::AllocateLeg {
            session: "call-1".into(),
            leg_key: "customer".into(),
            family: IpFamily::V4,
            requested_port: None,
            rtcp_mux: false,
            resume: None,
        },
    )
    .unwrap();
    let Response::Leg(info) = leg else {
        panic!("{leg:?}")
    };
    assert_eq!(
        info.local.port(),
        26624,
        "the first pair of the shard's range"
    );
    let stats = call(&mut c, 2, Request::Stats);
    let Ok(Response::Stats(stats)) = stats else {
        panic!("{stats:?}")
    };
    assert_eq!(stats.backend, "socket");
    assert_eq!(stats.shards[0].legs, 1);
}

#[test]
#[allow(clippy::disallowed_methods)] // Waits for a real process in real time.
fn sigterm_stops_the_engine_cleanly() {
    let mut engine = start(27648);
    let pid = engine.child.id() as i32;
    // SAFETY-free: kill(2) through the command line tool keeps this test free of unsafe.
    let status = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(status) = engine.child.try_wait().unwrap() {
            assert!(status.success(), "engine exited with {status}");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "engine still running 10 s after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        !engine.socket.exists(),
        "the API socket is removed on a clean stop"
    );
}

/// Calls sent back to back on one connection, many more than the engine answers at once
/// ([`earshot_engine::server::CALLS_IN_FLIGHT`]): each is answered exactly once,
/// under its own id, and each session's calls take effect in the order they were sent
/// (a session's second leg, its removal and its leg again).
#[test]
fn calls_sent_without_waiting_are_each_answered_once_and_in_order_per_session() {
    const SESSIONS: u64 = 100;
    let engine = start(28672);
    let mut c = connect(&engine.socket);
    write_frame(&mut c, &Hello::current()).unwrap();
    let _: Hello = read_frame(&mut c).unwrap().unwrap();
    let allocate = |session: u64, leg_key: &str| Request::AllocateLeg {
        session: format!("call-{session}"),
        leg_key: leg_key.into(),
        family: IpFamily::V4,
        requested_port: None,
        rtcp_mux: true,
        resume: None,
    };
    let mut calls = Vec::new();
    for s in 0..SESSIONS {
        calls.push(allocate(s, "a"));
        calls.push(allocate(s, "b"));
        calls.push(Request::RemoveSession {
            session: format!("call-{s}"),
        });
        calls.push(allocate(s, "a"));
    }
    let total = calls.len() as u64;
    // Written from a thread of its own, so that neither side waits on a full buffer.
    let mut w = c.try_clone().unwrap();
    let writer = std::thread::spawn(move || {
        for (id, request) in (1..).zip(calls) {
            write_frame(&mut w, &ClientFrame::Call { id, request }).unwrap();
        }
        w.flush().unwrap();
    });
    let mut results = std::collections::BTreeMap::new();
    while (results.len() as u64) < total {
        match read_frame::<_, ServerFrame>(&mut c).unwrap().unwrap() {
            ServerFrame::Reply { id, result } => {
                assert!(
                    results.insert(id, result).is_none(),
                    "call {id} answered twice"
                );
            }
            ServerFrame::Event(_) => {}
        }
    }
    writer.join().unwrap();
    assert_eq!(
        results.keys().copied().collect::<Vec<_>>(),
        (1..=total).collect::<Vec<_>>(),
        "every call answered, under its own id"
    );
    for (id, result) in &results {
        assert!(result.is_ok(), "call {id}: {result:?}");
    }
    // In order per session: the leg allocated after the removal is a fresh one, and
    // only it remains. Out of order, a removal would have run before or between the
    // allocations and left more legs, or the last allocation would have returned a
    // removed leg.
    for s in 0..SESSIONS {
        let leg = |id: u64| match &results[&id] {
            Ok(Response::Leg(info)) => info.leg,
            other => panic!("call {id}: {other:?}"),
        };
        let (first, again) = (leg(s * 4 + 1), leg(s * 4 + 4));
        assert_ne!(
            first, again,
            "session {s}: its leg after the removal is new"
        );
    }
    write_frame(
        &mut c,
        &ClientFrame::Call {
            id: total + 1,
            request: Request::Stats,
        },
    )
    .unwrap();
    let stats = loop {
        match read_frame::<_, ServerFrame>(&mut c).unwrap().unwrap() {
            ServerFrame::Reply { result, .. } => break result,
            ServerFrame::Event(_) => {}
        }
    };
    let Ok(Response::Stats(stats)) = stats else {
        panic!("{stats:?}")
    };
    let legs: u64 = stats.shards.iter().map(|s| s.legs).sum();
    assert_eq!(legs, SESSIONS, "one leg per session remains");
}
