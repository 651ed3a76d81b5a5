//! A private `s3s-fs` server on a loopback port (and free or closed ports for it).

use super::*;

/// Ports this process has handed out: never handed out twice, so two servers (or a server and
/// an "unreachable" endpoint) of parallel tests cannot end up on the same port.
static PORTS_USED: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());

/// A free loopback TCP port (bound then released; callers retry if somebody else takes it).
pub fn free_port() -> u16 {
    let mut used = PORTS_USED.lock().unwrap_or_else(|e| e.into_inner());
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("bind a loopback port");
        if !used.contains(&port) {
            used.push(port);
            return port;
        }
    }
}

/// A loopback port on which nothing listens (for "unreachable endpoint" tests).
pub fn closed_port() -> u16 {
    for _ in 0..50 {
        let p = free_port();
        let addr: SocketAddr = ([127, 0, 0, 1], p).into();
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
            return p;
        }
    }
    panic!("no closed loopback port found")
}

/// `s3s-fs` serving a private root directory on a loopback port; killed on drop.
pub struct S3Server {
    child: Option<Child>,
    port: u16,
    root: PathBuf,
    log: PathBuf,
    _dir: TempDir,
}

impl S3Server {
    /// Starts the server with the test keys and creates [`TEST_BUCKET`].
    pub fn start() -> S3Server {
        let bin = s3s_fs_bin();
        let dir = temp_dir("s3");
        let root = dir.path().join("root");
        fs::create_dir_all(&root).expect("create s3 root");
        let log = dir.path().join("s3s-fs.log");
        let mut last_err = String::new();
        for _attempt in 0..8 {
            let port = free_port();
            let log_file = fs::File::create(&log).expect("create s3s-fs log");
            let mut cmd = command(&bin);
            cmd.arg("--host")
                .arg("127.0.0.1")
                .arg("--port")
                .arg(port.to_string())
                .arg("--access-key")
                .arg(TEST_ACCESS_KEY)
                .arg("--secret-key")
                .arg(TEST_SECRET_KEY)
                .arg(&root)
                .env("RUST_LOG", "warn")
                .stdin(Stdio::null())
                .stdout(log_file.try_clone().expect("dup log"))
                .stderr(log_file);
            let mut child = cmd
                .spawn()
                .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
            let deadline = Instant::now() + Duration::from_secs(20);
            let addr: SocketAddr = ([127, 0, 0, 1], port).into();
            loop {
                if let Ok(Some(status)) = child.try_wait() {
                    last_err = format!(
                        "s3s-fs exited with {status}: {}",
                        fs::read_to_string(&log).unwrap_or_default()
                    );
                    break;
                }
                if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                    // A server that lost the race for the port exits at once: make sure the
                    // answer came from ours.
                    std::thread::sleep(Duration::from_millis(50));
                    if let Ok(Some(status)) = child.try_wait() {
                        last_err = format!(
                            "s3s-fs exited with {status}: {}",
                            fs::read_to_string(&log).unwrap_or_default()
                        );
                        break;
                    }
                    let server = S3Server {
                        child: Some(child),
                        port,
                        root,
                        log,
                        _dir: dir,
                    };
                    server.create_bucket(TEST_BUCKET);
                    return server;
                }
                if Instant::now() > deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    last_err = format!(
                        "s3s-fs did not answer on port {port} within 20 s: {}",
                        fs::read_to_string(&log).unwrap_or_default()
                    );
                    break;
                }
                std::thread::sleep(Duration::from_millis(25));
            }
        }
        panic!("could not start s3s-fs: {last_err}");
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `http://127.0.0.1:PORT`
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The server's address (`127.0.0.1:PORT`).
    pub fn addr(&self) -> SocketAddr {
        ([127, 0, 0, 1], self.port).into()
    }

    /// A fault-and-delay proxy in front of this server (no delay, no faults yet); point a
    /// volume's mounts at it with [`Volume::set_mount_s3_endpoint`]`(Some(&proxy.endpoint()))`.
    pub fn start_proxy(&self) -> spoolfs_s3proxy::Proxy {
        spoolfs_s3proxy::Proxy::start(spoolfs_s3proxy::ProxyConfig::new(self.addr()))
            .expect("start the S3 proxy")
    }

    /// The directory s3s-fs serves: one sub-directory per bucket, one file per object.
    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn bucket_dir(&self, bucket: &str) -> PathBuf {
        self.root.join(bucket)
    }

    /// s3s-fs makes a bucket of every directory in its root.
    pub fn create_bucket(&self, bucket: &str) {
        fs::create_dir_all(self.bucket_dir(bucket)).expect("create bucket directory");
    }

    pub fn delete_bucket(&self, bucket: &str) {
        let _ = fs::remove_dir_all(self.bucket_dir(bucket));
    }

    /// True while the server process runs.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Stops the server now (the port then refuses connections).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// A raw HTTP request line to the server; returns the status line (for smoke tests).
    pub fn http_status(&self, method: &str, path: &str) -> String {
        let addr: SocketAddr = ([127, 0, 0, 1], self.port).into();
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(5))).ok();
        write!(
            s,
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nConnection: close\r\n\r\n",
            self.port
        )
        .expect("send");
        let mut buf = Vec::new();
        let _ = s.read_to_end(&mut buf);
        String::from_utf8_lossy(&buf)
            .lines()
            .next()
            .unwrap_or("")
            .to_string()
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        self.stop();
    }
}
