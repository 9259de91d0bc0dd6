//! The loopback floor: what this machine's kernel charges for the writes of a fan-out, with no
//! server in the way.
//!
//! A fan-out to N members costs N socket writes on the node's core, and on loopback each write
//! also runs the receiving socket's TCP input there. No server can go below that. This
//! scenario measures it: the tool writes one record of `--bytes` to each of N loopback sockets
//! per round, `--rate` rounds a second, from one core, while a child process on another core
//! reads them with a bare epoll loop. The figures (CPU per write, CPU per read, stamp→read
//! latency) are the floor to hold `fanout` figures against: `fanout -n 10000 --rate 10`
//! cannot have a p99 below `floor -n 10000 --rate 10`'s.
//!
//! Each record starts with the round's start time (CLOCK_MONOTONIC ns, one clock for both
//! processes); warm-up rounds carry 0 and are counted but not timed.

use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::publisher::PublishResult;
use crate::receivers::ReceiverResult;
use crate::report::Report;
use crate::stats::Latency;

/// Bytes of the stamp at the head of every record.
const STAMP: usize = 8;

/// What a floor run does.
#[derive(Clone, Debug)]
pub struct FloorOpts {
    /// Sockets written per round (each one a member of the fan-out).
    pub connections: usize,
    /// Rounds per second.
    pub rate: f64,
    /// Bytes written to each socket per round (at least the 8-byte stamp).
    pub bytes: usize,
    /// Measured phase.
    pub duration: Duration,
    /// Rounds at the start that are counted but not timed.
    pub warmup: Duration,
    /// Core the writer runs on (the node's core in the standard setup).
    pub send_cpu: Option<usize>,
    /// Core the reader process runs on (the tool's core).
    pub recv_cpu: Option<usize>,
    /// The executable to run the reader with (default: this one, with `floor-reader`).
    pub reader_exe: Option<std::path::PathBuf>,
    /// Write the sockets in a random order instead of the order they were accepted in (which
    /// is the order the kernel allocated them in, and the cheaper one to write).
    pub shuffle: bool,
}

/// The reader's result, one JSON line on its stdout.
#[derive(Serialize, Deserialize)]
struct ReaderResult {
    /// Records read, warm-up included.
    records: u64,
    /// Records of timed rounds.
    timed: u64,
    /// CPU seconds of the reader process while it read.
    cpu_s: f64,
    latency: Latency,
}

/// Pins the calling thread to one core.
pub fn pin_to(cpu: usize) -> anyhow::Result<()> {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; CPU_SET and sched_setaffinity only touch it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(0, std::mem::size_of_val(&set), &set) != 0 {
            bail!(
                "cannot pin to core {cpu}: {}",
                std::io::Error::last_os_error()
            );
        }
    }
    Ok(())
}

/// CLOCK_MONOTONIC in ns: the same clock in every process of this machine.
fn mono_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec it is given.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// CPU seconds of the calling thread: the writer's own cost, without the reader-side threads.
fn thread_cpu_s() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec it is given.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 / 1e9
}

/// Runs the writer side (this process) against a reader child process; blocking.
pub fn run(opts: &FloorOpts) -> anyhow::Result<Report> {
    if opts.connections == 0 || opts.rate <= 0.0 {
        bail!("floor needs at least one connection and a positive rate");
    }
    let bytes = opts.bytes.max(STAMP);
    if let Some(cpu) = opts.send_cpu {
        pin_to(cpu)?;
    }
    let listener = listen_loopback()?;
    let port = listener.local_addr()?.port();
    let bound = opts.duration + opts.warmup + Duration::from_secs(120);
    let exe = match &opts.reader_exe {
        Some(p) => p.clone(),
        None => std::env::current_exe().context("cannot find own executable")?,
    };
    let mut cmd = Command::new(exe);
    cmd.arg("floor-reader")
        .arg("--port")
        .arg(port.to_string())
        .arg("-n")
        .arg(opts.connections.to_string())
        .arg("--bytes")
        .arg(bytes.to_string())
        .arg("--bound-s")
        .arg(bound.as_secs().to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped());
    if let Some(cpu) = opts.recv_cpu {
        cmd.arg("--cpu").arg(cpu.to_string());
    }
    let mut child = cmd.spawn().context("starting the reader process")?;
    let mut lines = BufReader::new(child.stdout.take().expect("piped"));

    let mut socks = accept_all(&listener, opts.connections, &mut child)?;
    if opts.shuffle {
        use rand::seq::SliceRandom;
        socks.shuffle(&mut rand::rng());
    }
    let mut line = String::new();
    lines.read_line(&mut line)?;
    if line.trim() != "ready" {
        bail!("the reader process did not get ready: {line:?}");
    }

    eprintln!(
        "floor: {} sockets, {} rounds/s, {bytes} B per write",
        opts.connections, opts.rate
    );
    let mut record = vec![b'x'; bytes];
    let every = Duration::from_secs_f64(1.0 / opts.rate);
    let start = Instant::now();
    let timed_from = start + opts.warmup;
    let end = timed_from + opts.duration;
    let mut round_ms = Latency::default();
    let (mut writes, mut timed_writes, mut blocked) = (0u64, 0u64, 0u64);
    let cpu0 = thread_cpu_s();
    let mut next = start;
    while next < end {
        let now = Instant::now();
        if now < next {
            std::thread::sleep(next - now);
        }
        let timed = next >= timed_from;
        let t0 = mono_ns();
        let stamp = if timed { t0 } else { 0 };
        record[..STAMP].copy_from_slice(&stamp.to_le_bytes());
        for s in &socks {
            match (&*s).write(&record) {
                Ok(n) if n == bytes => {}
                Ok(_) | Err(_) => blocked += 1,
            }
        }
        writes += socks.len() as u64;
        if timed {
            timed_writes += socks.len() as u64;
            round_ms.record_ns(mono_ns() - t0);
        }
        next += every;
    }
    let send_cpu = thread_cpu_s() - cpu0;
    drop(socks);

    line.clear();
    lines.read_line(&mut line)?;
    let reader: ReaderResult = serde_json::from_str(line.trim())
        .with_context(|| format!("the reader process's result: {line:?}"))?;
    let _ = child.wait();

    let params = json!({
        "connections": opts.connections, "rate": opts.rate, "bytes": bytes,
        "send_cpu": opts.send_cpu, "recv_cpu": opts.recv_cpu, "shuffle": opts.shuffle,
    });
    let rx = ReceiverResult {
        deliveries: reader.timed,
        latency: reader.latency,
        ..Default::default()
    };
    let tx = PublishResult {
        sent: timed_writes,
        ..Default::default()
    };
    let target = crate::net::Target::new("ws://127.0.0.1:1", 1, crate::WireFormat::Json)?;
    let mut report = Report::new(
        "floor",
        params,
        &target,
        opts.duration.as_secs_f64(),
        &rx,
        &tx,
        Vec::new(),
    );
    report.urls.clear();
    let us = |s: f64, n: u64| (s * 1e6 / n.max(1) as f64 * 100.0).round() / 100.0;
    let r = round_ms.percentiles();
    let x = &mut report.extra;
    x.insert("write_cpu_us".into(), json!(us(send_cpu, writes)));
    x.insert(
        "read_cpu_us".into(),
        json!(us(reader.cpu_s, reader.records)),
    );
    x.insert(
        "round_write_ms".into(),
        json!({"p50": r.p50_ms, "p99": r.p99_ms, "max": r.max_ms}),
    );
    x.insert("short_writes".into(), json!(blocked));
    x.insert(
        "lost_records".into(),
        json!(writes.saturating_sub(reader.records)),
    );
    Ok(report)
}

/// A listener on a free loopback port whose backlog holds a burst of the reader's connects: with
/// the default of 128 the kernel drops SYNs past it, and each dropped one costs a second.
fn listen_loopback() -> anyhow::Result<TcpListener> {
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
    sock.bind(&std::net::SocketAddr::from(([127, 0, 0, 1], 0)).into())?;
    sock.listen(4096)?;
    Ok(sock.into())
}

/// Accepts `n` connections from the reader, giving up if it dies or takes over a minute.
fn accept_all(
    l: &TcpListener,
    n: usize,
    child: &mut std::process::Child,
) -> anyhow::Result<Vec<TcpStream>> {
    l.set_nonblocking(true)?;
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut socks = Vec::with_capacity(n);
    while socks.len() < n {
        match l.accept() {
            Ok((s, _)) => {
                s.set_nodelay(true)?;
                s.set_nonblocking(true)?;
                socks.push(s);
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                if Instant::now() > deadline {
                    bail!("only {} of {n} reader connections came", socks.len());
                }
                if let Some(status) = child.try_wait()? {
                    bail!("the reader process ended early: {status}");
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(socks)
}

/// One reader socket and where it is in the current record.
struct Reading {
    sock: mio::net::TcpStream,
    /// Offset within the current record.
    at: usize,
    /// The current record's stamp, as far as it has arrived.
    stamp: [u8; STAMP],
    open: bool,
}

/// The reader process (hidden subcommand `floor-reader`): connects `n` sockets to the writer's
/// port, says `ready`, reads until every socket is closed, and prints its result as JSON.
pub fn run_reader(
    port: u16,
    n: usize,
    bytes: usize,
    cpu: Option<usize>,
    bound: Duration,
) -> anyhow::Result<()> {
    if let Some(cpu) = cpu {
        pin_to(cpu)?;
    }
    let deadline = Instant::now() + bound;
    let mut poll = mio::Poll::new()?;
    let mut conns = Vec::with_capacity(n);
    for i in 0..n {
        let s = TcpStream::connect(("127.0.0.1", port))
            .with_context(|| format!("connection {i} of {n}"))?;
        s.set_nonblocking(true)?;
        let mut sock = mio::net::TcpStream::from_std(s);
        poll.registry()
            .register(&mut sock, mio::Token(i), mio::Interest::READABLE)?;
        conns.push(Reading {
            sock,
            at: 0,
            stamp: [0; STAMP],
            open: true,
        });
    }
    println!("ready");
    std::io::stdout().flush()?;

    let cpu0 = crate::cpu::own_cpu_seconds();
    let mut events = mio::Events::with_capacity(1024);
    let mut buf = vec![0u8; 64 * 1024];
    let mut latency = Latency::default();
    let (mut records, mut timed, mut open) = (0u64, 0u64, n);
    while open > 0 && Instant::now() < deadline {
        poll.poll(&mut events, Some(Duration::from_millis(100)))?;
        for ev in events.iter() {
            let c = &mut conns[ev.token().0];
            // A short read drains the socket, unless its end has arrived too: the end raises no
            // further event, so it must be read now.
            let ending = ev.is_read_closed();
            while c.open {
                match c.sock.read(&mut buf) {
                    Ok(0) => {
                        c.open = false;
                        open -= 1;
                    }
                    Ok(k) => {
                        let now = mono_ns();
                        let mut data = &buf[..k];
                        while !data.is_empty() {
                            let take = if c.at < STAMP {
                                let take = (STAMP - c.at).min(data.len());
                                c.stamp[c.at..c.at + take].copy_from_slice(&data[..take]);
                                take
                            } else {
                                (bytes - c.at).min(data.len())
                            };
                            c.at += take;
                            data = &data[take..];
                            if c.at == bytes {
                                c.at = 0;
                                records += 1;
                                let stamp = u64::from_le_bytes(c.stamp);
                                if stamp != 0 {
                                    timed += 1;
                                    latency.record_ns(now.saturating_sub(stamp));
                                }
                            }
                        }
                        if k < buf.len() && !ending {
                            break;
                        }
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == ErrorKind::Interrupted => {}
                    Err(_) => {
                        c.open = false;
                        open -= 1;
                    }
                }
            }
        }
    }
    let result = ReaderResult {
        records,
        timed,
        cpu_s: crate::cpu::own_cpu_seconds() - cpu0,
        latency,
    };
    println!("{}", serde_json::to_string(&result)?);
    Ok(())
}
