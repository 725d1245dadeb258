//! Throw-away Redis, Redis Cluster and PostgreSQL servers for tests.
//!
//! Each server listens on a free loopback port, keeps its data in a temporary
//! directory, and is killed and removed when dropped. Tests inject faults by
//! killing ([`RedisServer::kill`]), pausing ([`RedisServer::pause`]) and
//! restarting a server on the same port.
//!
//! A missing server binary panics with the Debian package to install: a test
//! that needs a server never skips itself silently.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Mutex, OnceLock};
use std::thread::sleep;
use std::time::{Duration, Instant};

use tempfile::TempDir;

/// How long a server gets to become ready before the test fails.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// Finds `name` on `PATH` or in `extra` directories, or panics naming `package`.
fn find_binary(name: &str, extra: &[PathBuf], package: &str) -> PathBuf {
    let path_dirs = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default();
    extra
        .iter()
        .chain(path_dirs.iter())
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
        .unwrap_or_else(|| {
            panic!(
                "`{name}` was not found on PATH{}: install it with \
                 `apt-get install {package}` (or run `bash scripts/test.sh`, \
                 which installs it)",
                if extra.is_empty() {
                    String::new()
                } else {
                    format!(" or in {extra:?}")
                }
            )
        })
}

/// A loopback port nobody listens on now (and, with `bus`, whose Redis
/// Cluster bus port, `port + 10000`, is free too).
fn free_port(bus: bool) -> u16 {
    for _ in 0..100 {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
        let port = listener.local_addr().expect("local address").port();
        if !bus {
            return port;
        }
        if port < 55_000 && TcpListener::bind(("127.0.0.1", port + 10_000)).is_ok() {
            return port;
        }
    }
    panic!("no free loopback port pair found for a Redis Cluster node")
}

fn signal(child: &Child, signal: libc::c_int, group: bool) {
    let Ok(pid) = libc::pid_t::try_from(child.id()) else {
        return;
    };
    let target = if group { -pid } else { pid };
    // SAFETY: kill(2) has no memory-safety preconditions.
    unsafe {
        libc::kill(target, signal);
    }
}

fn reap(child: &mut Child) {
    let _ = child.wait();
}

type SpawnRequest = (Command, mpsc::Sender<std::io::Result<Child>>);

/// Spawns a server process from one thread that lives as long as the test
/// binary, with `PR_SET_PDEATHSIG = SIGKILL`: when the test process exits,
/// however it exits, the kernel kills every server it started (the death
/// signal follows the spawning *thread*, hence the dedicated one).
fn spawn_server(mut command: Command) -> std::io::Result<Child> {
    static KEEPER: OnceLock<Mutex<mpsc::Sender<SpawnRequest>>> = OnceLock::new();
    let keeper = KEEPER.get_or_init(|| {
        let (requests, inbox) = mpsc::channel::<SpawnRequest>();
        std::thread::Builder::new()
            .name("statecraft-server-keeper".into())
            .spawn(move || {
                for (mut command, reply) in inbox {
                    let _ = reply.send(command.spawn());
                }
            })
            .expect("start the server keeper thread");
        Mutex::new(requests)
    });
    // SAFETY: prctl is async-signal-safe and touches no Rust state.
    unsafe {
        command.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let (reply, answer) = mpsc::channel();
    keeper
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .send((command, reply))
        .map_err(|_| std::io::Error::other("the server keeper thread is gone"))?;
    answer
        .recv()
        .map_err(|_| std::io::Error::other("the server keeper thread is gone"))?
}

/// A temporary directory for a server, named `prefix…`. Directories left by
/// shared servers of earlier test runs whose process is gone are removed.
fn server_dir(prefix: &str) -> TempDir {
    let tmp = std::env::temp_dir();
    for entry in std::fs::read_dir(&tmp).into_iter().flatten().flatten() {
        let name = entry.file_name();
        if !name.to_string_lossy().starts_with(SHARED_PREFIX) {
            continue;
        }
        let owner = std::fs::read_to_string(entry.path().join(OWNER_FILE))
            .ok()
            .and_then(|pid| pid.trim().parse::<libc::pid_t>().ok());
        // SAFETY: kill with signal 0 only checks that the process exists.
        let gone = owner.is_some_and(|pid| unsafe { libc::kill(pid, 0) } != 0);
        if gone {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
    let dir = tempfile::Builder::new()
        .prefix(prefix)
        .tempdir()
        .expect("a temporary directory");
    let _ = std::fs::write(dir.path().join(OWNER_FILE), std::process::id().to_string());
    dir
}

/// Shared servers' directories start with this, so later runs can remove
/// them (a `static` is never dropped).
const SHARED_PREFIX: &str = "statecraft-shared-";
const OWNER_FILE: &str = "owner.pid";

/// A throw-away `redis-server`.
#[derive(Debug)]
pub struct RedisServer {
    port: u16,
    dir: TempDir,
    extra_args: Vec<String>,
    child: Option<Child>,
}

impl RedisServer {
    /// Starts a standalone server on a free loopback port.
    pub fn start() -> RedisServer {
        Self::start_with(Vec::new(), false, "statecraft-")
    }

    /// Starts a standalone server with more `redis-server` arguments (for
    /// example `["--rename-command", "FCALL", "\"\""]`, a server that
    /// answers `FCALL` as an unknown command, as Redis before 7 does).
    pub fn start_with_args(args: &[&str]) -> RedisServer {
        Self::start_with(
            args.iter().map(|arg| arg.to_string()).collect(),
            false,
            "statecraft-",
        )
    }

    /// One standalone server shared by every test of this test binary (each
    /// test keeps to its own key prefix). Killed when the binary exits.
    pub fn shared() -> &'static RedisServer {
        static SHARED: OnceLock<RedisServer> = OnceLock::new();
        SHARED.get_or_init(|| Self::start_with(Vec::new(), false, SHARED_PREFIX))
    }

    fn start_with(extra_args: Vec<String>, cluster: bool, prefix: &str) -> RedisServer {
        let mut last_error = String::new();
        for _ in 0..5 {
            let dir = server_dir(&format!("{prefix}redis-"));
            let mut server = RedisServer {
                port: free_port(cluster),
                dir,
                extra_args: extra_args.clone(),
                child: None,
            };
            match server.spawn() {
                Ok(()) => return server,
                Err(err) => last_error = err,
            }
        }
        panic!("redis-server did not start: {last_error}")
    }

    fn spawn(&mut self) -> Result<(), String> {
        let binary = find_binary("redis-server", &[], "redis-server");
        let log = self.dir.path().join("redis.log");
        let port = self.port.to_string();
        let mut command = Command::new(binary);
        command
            .args(["--port", &port, "--bind", "127.0.0.1", "--save", ""])
            .args(["--appendonly", "no", "--protected-mode", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .arg("--logfile")
            .arg(&log)
            .args(&self.extra_args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0);
        let child = spawn_server(command).map_err(|err| format!("spawning redis-server: {err}"))?;
        let port = self.port;
        self.child = Some(wait_ready(child, &log, port, || redis_ping(port))?);
        Ok(())
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Its `redis://` URL.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Starts a server that also listens for TLS, with a certificate for
    /// `127.0.0.1` signed by a throw-away CA (made with the `openssl`
    /// command). The plain port stays open for readiness checks.
    pub fn start_tls() -> TlsRedisServer {
        let dir = server_dir("statecraft-tls-");
        let openssl = find_binary("openssl", &[], "openssl");
        let run = |args: &[&str]| {
            let output = Command::new(&openssl)
                .args(args)
                .current_dir(dir.path())
                .stdin(Stdio::null())
                .output()
                .expect("openssl runs");
            assert!(
                output.status.success(),
                "openssl {args:?} failed: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        };
        let ec = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ];
        run(&[
            &["req", "-x509"][..],
            &ec,
            &["-keyout", "ca.key", "-out", "ca.crt"],
        ]
        .concat()
        .iter()
        .chain(&["-days", "2", "-subj", "/CN=statecraft test CA"])
        .copied()
        .collect::<Vec<_>>());
        run(&[
            &["req"][..],
            &ec,
            &["-keyout", "server.key", "-out", "server.csr"],
        ]
        .concat()
        .iter()
        .chain(&["-subj", "/CN=127.0.0.1"])
        .copied()
        .collect::<Vec<_>>());
        std::fs::write(dir.path().join("san.ext"), "subjectAltName=IP:127.0.0.1\n")
            .expect("write the SAN extension");
        run(&[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.crt",
            "-days",
            "2",
            "-extfile",
            "san.ext",
        ]);
        let tls_port = free_port(false);
        let path = |name: &str| dir.path().join(name).to_string_lossy().into_owned();
        let server = Self::start_with(
            vec![
                "--tls-port".into(),
                tls_port.to_string(),
                "--tls-cert-file".into(),
                path("server.crt"),
                "--tls-key-file".into(),
                path("server.key"),
                "--tls-ca-cert-file".into(),
                path("ca.crt"),
                "--tls-auth-clients".into(),
                "no".into(),
            ],
            false,
            "statecraft-",
        );
        let ca_pem = std::fs::read(dir.path().join("ca.crt")).expect("read the CA certificate");
        TlsRedisServer {
            server,
            tls_port,
            ca_pem,
            _certs: dir,
        }
    }

    /// Kills the server with SIGKILL (its data is gone: nothing is saved).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            signal(&child, libc::SIGKILL, true);
            reap(&mut child);
        }
    }

    /// Stops the server with SIGTERM and waits for it to exit.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            signal(&child, libc::SIGTERM, true);
            reap(&mut child);
        }
    }

    /// Freezes the server (SIGSTOP): connections stay open, nothing answers.
    pub fn pause(&self) {
        if let Some(child) = &self.child {
            signal(child, libc::SIGSTOP, true);
        }
    }

    /// Unfreezes a paused server (SIGCONT).
    pub fn resume(&self) {
        if let Some(child) = &self.child {
            signal(child, libc::SIGCONT, true);
        }
    }

    /// Starts the server again on the same port (after `kill` or `stop`).
    pub fn restart(&mut self) {
        self.kill();
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            match self.spawn() {
                Ok(()) => return,
                Err(err) if Instant::now() > deadline => {
                    panic!("redis-server did not restart on port {}: {err}", self.port)
                }
                Err(_) => sleep(Duration::from_millis(100)),
            }
        }
    }

    /// Runs `redis-cli` against this server and returns its output.
    pub fn cli(&self, args: &[&str]) -> String {
        let binary = find_binary("redis-cli", &[], "redis-tools");
        let output = Command::new(binary)
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
            .args(args)
            .output()
            .expect("redis-cli runs");
        String::from_utf8_lossy(&output.stdout).into_owned()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.resume();
        self.kill();
    }
}

/// A [`RedisServer`] that also speaks TLS; see [`RedisServer::start_tls`].
#[derive(Debug)]
pub struct TlsRedisServer {
    server: RedisServer,
    tls_port: u16,
    ca_pem: Vec<u8>,
    _certs: TempDir,
}

impl TlsRedisServer {
    /// Its `rediss://` URL.
    pub fn tls_url(&self) -> String {
        format!("rediss://127.0.0.1:{}", self.tls_port)
    }

    /// The PEM certificate of the CA that signed the server's certificate.
    pub fn ca_pem(&self) -> &[u8] {
        &self.ca_pem
    }

    /// The plain-TCP server underneath.
    pub fn server(&self) -> &RedisServer {
        &self.server
    }
}

/// Waits until `probe` says the server just spawned answers, and returns it;
/// or fails with its log if it exits, or kills it after [`READY_TIMEOUT`].
fn wait_ready(
    mut child: Child,
    log: &Path,
    port: u16,
    probe: impl Fn() -> bool,
) -> Result<Child, String> {
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        // Ours only if it is still running: a server that failed to bind
        // must not pass for whatever else answers on the port.
        if probe() && matches!(child.try_wait(), Ok(None)) {
            return Ok(child);
        }
        if let Ok(Some(status)) = child.try_wait() {
            let log = std::fs::read_to_string(log).unwrap_or_default();
            return Err(format!("exited with {status}: {log}"));
        }
        if Instant::now() > deadline {
            signal(&child, libc::SIGKILL, true);
            reap(&mut child);
            return Err(format!("not ready on port {port} within {READY_TIMEOUT:?}"));
        }
        sleep(Duration::from_millis(20));
    }
}

/// Whether a Redis server answers `PING` on `port`.
fn redis_ping(port: u16) -> bool {
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
    if stream.write_all(b"PING\r\n").is_err() {
        return false;
    }
    let mut reply = [0u8; 7];
    stream.read_exact(&mut reply).is_ok() && &reply == b"+PONG\r\n"
}

/// A throw-away Redis Cluster of masters without replicas.
#[derive(Debug)]
pub struct RedisCluster {
    nodes: Vec<RedisServer>,
}

impl RedisCluster {
    /// Starts `masters` (at least 3) cluster-enabled servers and joins them
    /// with `redis-cli --cluster create`, then waits for `cluster_state:ok`.
    pub fn start(masters: usize) -> RedisCluster {
        Self::start_in(masters, "statecraft-")
    }

    /// One 3-master cluster shared by every test of this test binary.
    pub fn shared() -> &'static RedisCluster {
        static SHARED: OnceLock<RedisCluster> = OnceLock::new();
        SHARED.get_or_init(|| Self::start_in(3, SHARED_PREFIX))
    }

    fn start_in(masters: usize, prefix: &str) -> RedisCluster {
        assert!(masters >= 3, "Redis Cluster needs at least 3 masters");
        let nodes: Vec<RedisServer> = (0..masters)
            .map(|_| {
                RedisServer::start_with(
                    [
                        "--cluster-enabled",
                        "yes",
                        "--cluster-config-file",
                        "nodes.conf",
                        "--cluster-node-timeout",
                        "5000",
                    ]
                    .map(String::from)
                    .to_vec(),
                    true,
                    prefix,
                )
            })
            .collect();
        let binary = find_binary("redis-cli", &[], "redis-tools");
        let addresses: Vec<String> = nodes
            .iter()
            .map(|node| format!("127.0.0.1:{}", node.port))
            .collect();
        let output = Command::new(binary)
            .arg("--cluster")
            .arg("create")
            .args(&addresses)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .stdin(Stdio::null())
            .output()
            .expect("redis-cli --cluster create runs");
        assert!(
            output.status.success(),
            "redis-cli --cluster create failed: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        let cluster = RedisCluster { nodes };
        let deadline = Instant::now() + READY_TIMEOUT;
        while !cluster
            .nodes
            .iter()
            .all(|node| node.cli(&["cluster", "info"]).contains("cluster_state:ok"))
        {
            assert!(
                Instant::now() < deadline,
                "the Redis Cluster did not reach cluster_state:ok"
            );
            sleep(Duration::from_millis(50));
        }
        cluster
    }

    /// The nodes, to kill or restart one.
    pub fn nodes(&mut self) -> &mut [RedisServer] {
        &mut self.nodes
    }

    /// The cluster's URL as statecraft spells it:
    /// `redis+cluster://127.0.0.1:p1,127.0.0.1:p2,…`.
    pub fn url(&self) -> String {
        let hosts: Vec<String> = self
            .nodes
            .iter()
            .map(|node| format!("127.0.0.1:{}", node.port))
            .collect();
        format!("redis+cluster://{}", hosts.join(","))
    }
}

/// The directory holding `initdb`, `postgres` and `pg_ctl`.
fn postgres_bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("STATECRAFT_PG_BIN") {
        return PathBuf::from(dir);
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let version = entry.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = entry.path().join("bin");
            bin.join("initdb").is_file().then_some((version, bin))
        })
        .collect();
    versions.sort();
    let extra: Vec<PathBuf> = versions.pop().map(|(_, bin)| bin).into_iter().collect();
    let initdb = find_binary("initdb", &extra, "postgresql");
    initdb
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// The uid and gid to run PostgreSQL as: `postgres` when we are root
/// (PostgreSQL refuses to run as root), otherwise ourselves.
fn postgres_identity() -> Option<(u32, u32)> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return None;
    }
    let name = c"postgres";
    // SAFETY: getpwnam takes a valid C string; the result is read at once.
    let entry = unsafe { libc::getpwnam(name.as_ptr()) };
    assert!(
        !entry.is_null(),
        "running as root, PostgreSQL must run as the `postgres` user, which does not \
         exist: install PostgreSQL with `apt-get install postgresql`"
    );
    // SAFETY: entry is non-null and points at getpwnam's static record.
    let (uid, gid) = unsafe { ((*entry).pw_uid, (*entry).pw_gid) };
    Some((uid, gid))
}

/// A throw-away PostgreSQL server (`initdb` + `postgres`), running as the
/// `postgres` user when the tests run as root.
#[derive(Debug)]
pub struct PostgresServer {
    port: u16,
    dir: TempDir,
    bin: PathBuf,
    identity: Option<(u32, u32)>,
    child: Option<Child>,
}

impl PostgresServer {
    /// Initialises a cluster in a temporary directory and starts it.
    pub fn start() -> PostgresServer {
        Self::start_in("statecraft-")
    }

    /// One server shared by every test of this test binary (each test keeps
    /// to its own table). Killed when the binary exits.
    pub fn shared() -> &'static PostgresServer {
        static SHARED: OnceLock<PostgresServer> = OnceLock::new();
        SHARED.get_or_init(|| Self::start_in(SHARED_PREFIX))
    }

    fn start_in(prefix: &str) -> PostgresServer {
        let bin = postgres_bin_dir();
        let identity = postgres_identity();
        let dir = server_dir(&format!("{prefix}pg-"));
        if let Some((uid, gid)) = identity {
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid))
                .expect("hand the data directory to the postgres user");
        }
        let mut server = PostgresServer {
            port: 0,
            dir,
            bin,
            identity,
            child: None,
        };
        let output = server
            .command("initdb")
            .arg("-D")
            .arg(server.data_dir())
            .args(["-U", "postgres", "--auth=trust", "-E", "UTF8", "--locale=C"])
            .arg("--no-sync")
            .output()
            .expect("initdb runs");
        assert!(
            output.status.success(),
            "initdb failed: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        let mut last_error = String::new();
        for _ in 0..5 {
            server.port = free_port(false);
            match server.spawn() {
                Ok(()) => return server,
                Err(err) => last_error = err,
            }
        }
        panic!("postgres did not start: {last_error}")
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn command(&self, program: &str) -> Command {
        let mut command = Command::new(self.bin.join(program));
        command.stdin(Stdio::null()).env("LC_ALL", "C");
        if let Some((uid, gid)) = self.identity {
            command.uid(uid).gid(gid).env("HOME", self.dir.path());
        }
        command
    }

    fn spawn(&mut self) -> Result<(), String> {
        let log = self.dir.path().join("postgres.log");
        let log_file = std::fs::File::create(&log).map_err(|err| err.to_string())?;
        if let Some((uid, gid)) = self.identity {
            let _ = std::os::unix::fs::chown(&log, Some(uid), Some(gid));
        }
        let mut command = self.command("postgres");
        command
            .arg("-D")
            .arg(self.data_dir())
            .args(["-p", &self.port.to_string(), "-k"])
            .arg(self.dir.path())
            .args([
                "-c",
                "listen_addresses=127.0.0.1",
                "-c",
                "max_connections=300",
            ])
            .stdout(Stdio::null())
            .stderr(log_file)
            .process_group(0);
        let child = spawn_server(command).map_err(|err| format!("spawning postgres: {err}"))?;
        let port = self.port.to_string();
        let probe = || {
            self.command("pg_isready")
                .args(["-q", "-h", "127.0.0.1", "-p", &port])
                .status()
                .is_ok_and(|status| status.success())
        };
        self.child = Some(wait_ready(child, &log, self.port, probe)?);
        Ok(())
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// A connection string for the `postgres` database as the `postgres` user.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// `pg_ctl stop -m immediate`: every process exits at once, without a
    /// checkpoint; the next start replays the write-ahead log.
    pub fn stop_immediate(&mut self) {
        let output = self
            .command("pg_ctl")
            .arg("-D")
            .arg(self.data_dir())
            .args(["stop", "-m", "immediate", "-w"])
            .output()
            .expect("pg_ctl runs");
        assert!(
            output.status.success(),
            "pg_ctl stop -m immediate failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        if let Some(mut child) = self.child.take() {
            reap(&mut child);
        }
    }

    /// Kills the server and all its processes with SIGKILL at once.
    ///
    /// Every PostgreSQL backend runs in its own process group, so killing
    /// the postmaster's group is not enough: a backend could still answer
    /// a query on an open connection before it noticed. The postmaster is
    /// stopped first (so that it forks no backend for a client that
    /// reconnects meanwhile), then its backends, found through `/proc`, are
    /// killed, then it is.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let postmaster = child.id();
            if let Ok(pid) = libc::pid_t::try_from(postmaster) {
                // SAFETY: kill(2) has no memory-safety preconditions.
                unsafe {
                    libc::kill(pid, libc::SIGSTOP);
                }
            }
            let children: Vec<libc::pid_t> = std::fs::read_dir("/proc")
                .into_iter()
                .flatten()
                .flatten()
                .filter_map(|entry| {
                    let pid = entry.file_name().to_str()?.parse::<libc::pid_t>().ok()?;
                    let stat = std::fs::read_to_string(entry.path().join("stat")).ok()?;
                    // The parent pid is the second field after the
                    // parenthesised command name.
                    let after_name = &stat[stat.rfind(')')? + 1..];
                    let parent = after_name.split_whitespace().nth(1)?.parse::<u32>().ok()?;
                    (parent == postmaster).then_some(pid)
                })
                .collect();
            for pid in children {
                // SAFETY: kill(2) has no memory-safety preconditions.
                unsafe {
                    libc::kill(pid, libc::SIGKILL);
                }
            }
            signal(&child, libc::SIGKILL, true);
            reap(&mut child);
        }
    }

    /// Starts the server again on the same port (after a stop or kill).
    pub fn restart(&mut self) {
        self.kill();
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            match self.spawn() {
                Ok(()) => return,
                Err(err) if Instant::now() > deadline => {
                    panic!("postgres did not restart on port {}: {err}", self.port)
                }
                Err(_) => sleep(Duration::from_millis(200)),
            }
        }
    }
}

impl Drop for PostgresServer {
    fn drop(&mut self) {
        self.kill();
    }
}
