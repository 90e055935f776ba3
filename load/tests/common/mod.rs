//! What the load crate's integration tests share: a running `mock-model`.

#![allow(dead_code, reason = "each test file uses part of it")]

use std::io::{BufRead as _, BufReader, Read as _};
use std::process::{Child, Command, Stdio};

/// A running `mock-model` process, killed when dropped.
pub struct MockModel {
    /// The process.
    pub child: Child,
    /// `http://IP:PORT`, from the `listening on` line.
    pub url: String,
}

impl MockModel {
    /// Starts the binary with `args` and waits for its `listening on` line.
    pub fn start(args: &[&str]) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_mock-model"))
            .args(["--listen", "127.0.0.1:0"])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("mock-model starts");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let Some(url) = line.trim().strip_prefix("listening on ") else {
            let _ = child.wait();
            let mut stderr = String::new();
            let _ = child.stderr.take().unwrap().read_to_string(&mut stderr);
            panic!("no listening line (stdout {line:?}, stderr {stderr:?})");
        };
        assert!(url.starts_with("http://127.0.0.1:"), "{url}");
        let url = url.to_owned();
        Self { child, url }
    }

    /// Sends SIGTERM, waits for the exit, and returns stderr.
    pub fn terminate(mut self) -> String {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        let exit = self.child.wait().unwrap();
        assert!(exit.success(), "SIGTERM is a clean exit: {exit:?}");
        let mut stderr = String::new();
        self.child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut stderr)
            .unwrap();
        stderr
    }
}

impl Drop for MockModel {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
