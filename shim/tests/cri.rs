//! Pods through containerd's CRI, as kubelet drives it with a RuntimeClass whose handler
//! is wasmvm: the sandbox is a placeholder, each container a VM in the pod's network
//! namespace; exit codes and log lines reach CRI, and the HTTP sample answers at the
//! pod's IP (a CNI bridge inside the test's network namespace).

mod harness;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use harness::cri::*;
use harness::*;

const HANDLER: &str = "wasmvm";

struct Pod<'a> {
    cri: &'a Cri,
    id: String,
    config: PodSandboxConfig,
}

fn run_pod<'a>(cri: &'a Cri, c: &Containerd, name: &str) -> Pod<'a> {
    let logs = c.dir.path().join("logs").join(name);
    std::fs::create_dir_all(&logs).unwrap();
    let config = PodSandboxConfig {
        metadata: Some(PodSandboxMetadata {
            name: name.into(),
            uid: format!("uid-{name}"),
            namespace: "default".into(),
            attempt: 0,
        }),
        hostname: name.into(),
        log_directory: logs.to_string_lossy().into_owned(),
        linux: Some(LinuxPodSandboxConfig {
            cgroup_parent: format!("/{}-{name}", c.namespace),
            security_context: Some(LinuxSandboxSecurityContext {
                namespace_options: Some(NamespaceOption::default()),
            }),
        }),
    };
    let resp: RunPodSandboxResponse = cri
        .call(
            "RunPodSandbox",
            RunPodSandboxRequest {
                config: Some(config.clone()),
                runtime_handler: HANDLER.into(),
            },
        )
        .unwrap_or_else(|e| panic!("RunPodSandbox: {e}\n{}", c.log()));
    Pod {
        cri,
        id: resp.pod_sandbox_id,
        config,
    }
}

impl Pod<'_> {
    fn ip(&self) -> String {
        let s: PodSandboxStatusResponse = self
            .cri
            .call(
                "PodSandboxStatus",
                PodSandboxIdRequest {
                    pod_sandbox_id: self.id.clone(),
                },
            )
            .unwrap();
        s.status.unwrap().network.unwrap().ip
    }

    /// Creates and starts container `name` running `image`'s `/app.img` with `args`.
    fn start(&self, name: &str, image: &str, args: &[&str]) -> String {
        self.start_command(name, image, "/app.img", args)
    }

    fn start_command(&self, name: &str, image: &str, command: &str, args: &[&str]) -> String {
        let resp: CreateContainerResponse = self
            .cri
            .call(
                "CreateContainer",
                CreateContainerRequest {
                    pod_sandbox_id: self.id.clone(),
                    config: Some(ContainerConfig {
                        metadata: Some(ContainerMetadata {
                            name: name.into(),
                            attempt: 0,
                        }),
                        image: Some(ImageSpec {
                            image: image.into(),
                        }),
                        command: vec![command.into()],
                        args: args.iter().map(|a| a.to_string()).collect(),
                        envs: vec![KeyValue {
                            key: "FROM_POD".into(),
                            value: "yes".into(),
                        }],
                        log_path: format!("{name}.log"),
                    }),
                    sandbox_config: Some(self.config.clone()),
                },
            )
            .unwrap_or_else(|e| panic!("CreateContainer {name}: {e}"));
        let id = resp.container_id;
        let _: Empty = self
            .cri
            .call(
                "StartContainer",
                ContainerIdRequest {
                    container_id: id.clone(),
                },
            )
            .unwrap_or_else(|e| panic!("StartContainer {name}: {e}"));
        id
    }

    fn status(&self, id: &str) -> ContainerStatus {
        let s: ContainerStatusResponse = self
            .cri
            .call(
                "ContainerStatus",
                ContainerIdRequest {
                    container_id: id.into(),
                },
            )
            .unwrap();
        s.status.unwrap()
    }

    /// Waits for container `id` to exit (CRI learns it from the shim's exit event).
    fn wait_exit(&self, id: &str) -> ContainerStatus {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let status = self.status(id);
            if status.state == CONTAINER_EXITED {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "container {id} never exited: {status:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Container `name`'s CRI log so far (`TIME STREAM TAG LINE` lines).
    fn log(&self, name: &str) -> String {
        let path = std::path::Path::new(&self.config.log_directory).join(format!("{name}.log"));
        std::fs::read_to_string(path).unwrap_or_default()
    }

    /// Waits for `line` in container `name`'s CRI log.
    fn wait_log_line(&self, name: &str, line: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let log = self.log(name);
            if log.lines().any(|l| l.ends_with(line)) {
                return log;
            }
            assert!(
                Instant::now() < deadline,
                "no line {line:?} in {name}'s log:\n{log}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops container `id` as kubelet does (SIGTERM, SIGKILL after 10 s) and waits for
    /// its exit; SIGTERM stops a VM at once (143).
    fn stop(&self, id: &str) -> ContainerStatus {
        let _: Empty = self
            .cri
            .call(
                "StopContainer",
                StopContainerRequest {
                    container_id: id.into(),
                    timeout: 10,
                },
            )
            .unwrap_or_else(|e| panic!("StopContainer {id}: {e}"));
        self.wait_exit(id)
    }

    fn remove(self) {
        for method in ["StopPodSandbox", "RemovePodSandbox"] {
            let _: Empty = self
                .cri
                .call(
                    method,
                    PodSandboxIdRequest {
                        pod_sandbox_id: self.id.clone(),
                    },
                )
                .unwrap_or_else(|e| panic!("{method}: {e}"));
        }
    }
}

/// containerd with CRI's images in place: the pause image and wasm images in `k8s.io`.
fn with_images() -> Option<(Containerd, tempfile::TempDir)> {
    if !available() {
        return None;
    }
    let dir = scratch();
    let c = Containerd::start();
    let pause = dir.path().join("pause.tar");
    oci::write_image(
        &pause,
        PAUSE_IMAGE,
        ("linux", "amd64"),
        &[("pause", b"never run: the shim's sandbox is a placeholder")],
        &["/pause"],
    );
    c.import_into("k8s.io", &pause, "linux/amd64");
    let exitcode = oci_image(
        dir.path(),
        &sample("exitcode"),
        "wasmvm.test/exitcode:1",
        &[],
    );
    c.import_into("k8s.io", &exitcode, "wasip1/wasm");
    let http = oci_image(
        dir.path(),
        &sample("http"),
        "wasmvm.test/http:1",
        &["--listen", "8080"],
    );
    c.import_into("k8s.io", &http, "wasip1/wasm");
    Some((c, dir))
}

#[test]
fn a_pod_runs_containers_as_vms_with_exit_codes_and_logs() {
    let Some((c, _dir)) = with_images() else {
        return;
    };
    let cri = Cri::connect(&c.socket);
    let pod = run_pod(&cri, &c, "batch");

    let lines = pod.start(
        "lines",
        "wasmvm.test/exitcode:1",
        &["args", "first line", "second"],
    );
    let status = pod.wait_exit(&lines);
    assert_eq!(status.exit_code, 0, "{status:?}");
    let log = pod.wait_log_line("lines", "second");
    assert!(log.contains(" stdout F first line\n"), "{log}");

    let failing = pod.start("failing", "wasmvm.test/exitcode:1", &["exit", "3"]);
    assert_eq!(pod.wait_exit(&failing).exit_code, 3);

    let env = pod.start("env", "wasmvm.test/exitcode:1", &["env"]);
    pod.wait_exit(&env);
    pod.wait_log_line("env", "FROM_POD=yes");

    // A container created and removed without ever starting: its launcher ends, the
    // shim goes on.
    let resp: CreateContainerResponse = cri
        .call(
            "CreateContainer",
            CreateContainerRequest {
                pod_sandbox_id: pod.id.clone(),
                config: Some(ContainerConfig {
                    metadata: Some(ContainerMetadata {
                        name: "unstarted".into(),
                        attempt: 0,
                    }),
                    image: Some(ImageSpec {
                        image: "wasmvm.test/exitcode:1".into(),
                    }),
                    command: vec!["/app.img".into()],
                    log_path: "unstarted.log".into(),
                    ..Default::default()
                }),
                sandbox_config: Some(pod.config.clone()),
            },
        )
        .unwrap();
    let _: Empty = cri
        .call(
            "RemoveContainer",
            ContainerIdRequest {
                container_id: resp.container_id.clone(),
            },
        )
        .unwrap();
    assert!(
        cri.call::<_, ContainerStatusResponse>(
            "ContainerStatus",
            ContainerIdRequest {
                container_id: resp.container_id
            }
        )
        .is_err()
    );

    // Refused in the pod as on the command line: a reason in the log, status 253.
    let shell = pod.start_command(
        "shell",
        "wasmvm.test/exitcode:1",
        "/bin/sh",
        &["-c", "true"],
    );
    assert_eq!(pod.wait_exit(&shell).exit_code, 253);
    pod.wait_log_line("shell", "wasmvm: the entrypoint /bin/sh is not in the image: it needs a wasm module or wasmvm image there");

    // The pod's containers shared one shim, which ends with the pod and leaves no cgroup.
    let shims = c.shims();
    assert_eq!(shims.len(), 1, "one shim per pod: {shims:?}");
    let socket = shim_socket(shims[0]);
    assert!(socket.exists(), "{}", socket.display());
    pod.remove();
    assert!(wait_gone(shims[0]), "the pod's shim outlived the pod");
    assert!(
        wait_removed(&socket),
        "the pod's shim left its socket {}",
        socket.display()
    );
    let cgroup = format!("/sys/fs/cgroup/memory/{}-batch", c.namespace);
    let leftover = std::fs::read_dir(&cgroup)
        .map(|d| d.flatten().filter(|e| e.path().is_dir()).count())
        .unwrap_or(0);
    assert_eq!(leftover, 0, "containers' cgroups left in {cgroup}");
}

/// `GET /` over HTTP/1.0 to `addr` from network namespace `netns`, on a thread that
/// joins it: the reply up to the server's close, or which step failed. Every step is
/// bounded, so a lost connection fails the test instead of hanging it.
fn http_get_in_netns(netns: &str, addr: &str) -> Result<String, String> {
    use std::io::{Read, Write};
    use std::os::fd::AsRawFd;
    let path = format!("/var/run/netns/{netns}");
    let addr: std::net::SocketAddr = addr.parse().unwrap();
    std::thread::scope(|s| {
        s.spawn(|| {
            let ns = std::fs::File::open(&path).map_err(|e| format!("{path}: {e}"))?;
            // SAFETY: setns on a descriptor we own; it moves only this thread, which ends
            // with the scope.
            if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(format!("setns {path}: {}", std::io::Error::last_os_error()));
            }
            let limit = Duration::from_secs(30);
            let mut stream = std::net::TcpStream::connect_timeout(&addr, limit)
                .map_err(|e| format!("connect to {addr}: {e}"))?;
            stream.set_read_timeout(Some(limit)).unwrap();
            stream.set_write_timeout(Some(limit)).unwrap();
            stream
                .write_all(b"GET / HTTP/1.0\r\n\r\n")
                .map_err(|e| format!("send the request to {addr}: {e}"))?;
            let mut reply = Vec::new();
            match stream.read_to_end(&mut reply) {
                Ok(_) => Ok(String::from_utf8_lossy(&reply).into_owned()),
                Err(e) => Err(format!(
                    "read the reply from {addr}: {e} after {} bytes: {:?}",
                    reply.len(),
                    String::from_utf8_lossy(&reply)
                )),
            }
        })
        .join()
        .unwrap()
    })
}

/// `GET /` from the test's network namespace, across the CNI bridge, to the server in
/// `pod` at `ip`: the reply, or a failure with the server's and containerd's logs.
fn get_root(c: &Containerd, pod: &Pod, ip: &str) -> String {
    http_get_in_netns(&c.netns, &format!("{ip}:8080")).unwrap_or_else(|e| {
        let log = c.log();
        let tail: Vec<&str> = log.lines().rev().take(80).collect();
        panic!(
            "{e}\nserver log:\n{}\ncontainerd log (last lines):\n{}",
            pod.log("server"),
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        )
    })
}

#[test]
fn the_http_sample_answers_at_its_pod_ip() {
    let Some((c, _dir)) = with_images() else {
        return;
    };
    let cri = Cri::connect(&c.socket);
    let pod = run_pod(&cri, &c, "web");
    let ip = pod.ip();
    assert!(ip.starts_with("10.88.0."), "pod IP {ip}");
    let server = pod.start("server", "wasmvm.test/http:1", &[]);
    pod.wait_log_line("server", "listening on fd 3");
    assert_eq!(pod.status(&server).state, CONTAINER_RUNNING);
    let reply = get_root(&c, &pod, &ip);
    assert!(reply.starts_with("HTTP/1."), "{reply}");
    assert_eq!(pod.stop(&server).exit_code, 143);
    pod.remove();
}

#[test]
fn a_pod_keeps_serving_across_a_containerd_restart_and_its_exit_still_arrives() {
    let Some((mut c, _dir)) = with_images() else {
        return;
    };
    let (id, config, server, ip) = {
        let cri = Cri::connect(&c.socket);
        let pod = run_pod(&cri, &c, "survivor");
        let ip = pod.ip();
        let server = pod.start("server", "wasmvm.test/http:1", &[]);
        pod.wait_log_line("server", "listening on fd 3");
        (pod.id.clone(), pod.config.clone(), server, ip)
    };

    // containerd dies with SIGKILL and comes back on the same state: the shim and the VM
    // never noticed.
    c.restart();
    let cri = Cri::connect(&c.socket);
    let pod = Pod {
        cri: &cri,
        id,
        config,
    };
    // CRI answers once it has recovered its pods and containers from the shims.
    let deadline = Instant::now() + Duration::from_secs(60);
    let state = loop {
        match cri.call::<_, ContainerStatusResponse>(
            "ContainerStatus",
            ContainerIdRequest {
                container_id: server.clone(),
            },
        ) {
            Ok(s) => break s.status.unwrap().state,
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
            Err(e) => panic!("CRI did not recover within 60 s: {e}\n{}", c.log()),
        }
    };
    assert_eq!(state, CONTAINER_RUNNING);
    let reply = get_root(&c, &pod, &ip);
    assert!(reply.starts_with("HTTP/1."), "{reply}");

    // The shim's event connection died with the old containerd; the exit must still reach
    // the new one as an event (CRI alone would also learn it from its Wait call).
    let mut events = Command::new("ctr");
    events
        .arg("-a")
        .arg(&c.socket)
        .args(["-n", "k8s.io", "events"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let mut events = events.spawn().unwrap();
    let mut lines = Lines::new(events.stdout.take().unwrap());
    // Subscribed once an event of our own shows up. `ctr events` may subscribe after the
    // first one went out, which it then never sees: label again until one arrives.
    let mut subscribed = false;
    for probe in 0..60 {
        let label = Command::new("ctr")
            .arg("-a")
            .arg(&c.socket)
            .args(["namespaces", "label", "k8s.io"])
            .arg(format!("wasmvm-probe={probe}"))
            .output()
            .unwrap();
        assert!(label.status.success(), "{}", stderr(&label));
        if lines
            .until(Duration::from_secs(1), |l| l.contains("/namespaces/update"))
            .is_ok()
        {
            subscribed = true;
            break;
        }
    }
    assert!(subscribed, "ctr events saw none of 60 namespace updates");
    assert_eq!(pod.stop(&server).exit_code, 143);
    let exit = lines.until(Duration::from_secs(60), |l| {
        l.contains("/tasks/exit") && l.contains(&server)
    });
    let _ = events.kill();
    let _ = events.wait();
    exit.unwrap_or_else(|e| panic!("no exit event: {e}\n{}", c.log()));
    pod.remove();
}

#[test]
fn many_containers_started_back_to_back_in_one_pod_each_report_their_own_exit_and_log() {
    let Some((c, _dir)) = with_images() else {
        return;
    };
    let cri = Cri::connect(&c.socket);
    let pod = run_pod(&cri, &c, "crowd");
    const N: usize = 16;
    // Created and started back to back, one shim serving them all: its spawner, reaper and
    // event lock see them all at once.
    // Even ones exit with their own code, odd ones print their own line.
    let ids: Vec<String> = (0..N)
        .map(|i| {
            let name = format!("c{i}");
            if i % 2 == 0 {
                let code = (i % 7).to_string();
                pod.start(&name, "wasmvm.test/exitcode:1", &["exit", &code])
            } else {
                let line = format!("line-{i}");
                pod.start(&name, "wasmvm.test/exitcode:1", &["args", &line])
            }
        })
        .collect();
    for (i, id) in ids.iter().enumerate() {
        let status = pod.wait_exit(id);
        if i % 2 == 0 {
            assert_eq!(status.exit_code, (i % 7) as i32, "c{i}: {status:?}");
        } else {
            assert_eq!(status.exit_code, 0, "c{i}: {status:?}");
            pod.wait_log_line(&format!("c{i}"), &format!("line-{i}"));
        }
    }
    assert_eq!(c.shims().len(), 1, "one shim for the pod");
    pod.remove();
}
