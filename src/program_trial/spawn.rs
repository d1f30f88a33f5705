//! Starts the program's process the way `posix_spawn` does on Linux (`clone` with `CLONE_VM |
//! CLONE_VFORK`: the new process borrows the caller's memory until it execs, and the caller waits
//! only that long), plus the two things `posix_spawn` cannot do: PR_SET_PDEATHSIG and
//! RLIMIT_DATA. std's `Command` must fork as soon as it is given `pre_exec` code, and a fork of
//! the orchestrator (a 100 MB binary with the results tables' heap) copies its page tables and
//! then takes copy-on-write faults in both processes: most of a no-op trial's overhead once the
//! supervisor ran in-process.
//!
//! The child runs only system calls, on data prepared before the clone (no allocation, no lock:
//! the other threads of the caller keep running beside it), on a stack of its own, with every
//! signal blocked until the handlers it inherited are back to the default (as glibc's
//! `posix_spawn` does; a handler of the caller's would otherwise run on borrowed memory).

use std::ffi::{CString, OsStr, OsString};
use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::ExitStatus;
use std::sync::atomic::{AtomicI32, Ordering};

/// A started program: its process id and the read ends of its stdout and stderr. Like std's
/// `Child`, dropping it neither waits for nor kills the process.
#[derive(Debug)]
pub struct Program {
    pid: u32,
    pub stdout: Option<File>,
    pub stderr: Option<File>,
    status: Option<ExitStatus>,
}

impl Program {
    pub fn id(&self) -> u32 {
        self.pid
    }

    /// Its exit status when it has exited (reaped now, or earlier), else None.
    pub fn try_wait(&mut self) -> std::io::Result<Option<ExitStatus>> {
        if let Some(status) = self.status {
            return Ok(Some(status));
        }
        let mut raw = 0;
        // SAFETY: waitpid writes only `raw`.
        let reaped = unsafe { libc::waitpid(self.pid as libc::pid_t, &mut raw, libc::WNOHANG) };
        match reaped {
            0 => Ok(None),
            r if r < 0 => Err(std::io::Error::last_os_error()),
            _ => {
                let status = ExitStatus::from_raw(raw);
                self.status = Some(status);
                Ok(Some(status))
            }
        }
    }
}

/// What the new process does before it becomes the program (its memory limit also sets
/// MALLOC_ARENA_MAX in `child::spawn`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Setup {
    /// A process group of its own, led by the program (else the caller's).
    pub own_group: bool,
    /// SIGKILL when the calling thread ends (PR_SET_PDEATHSIG).
    pub die_with_caller: bool,
    /// RLIMIT_DATA, bytes.
    pub memory_limit: Option<u64>,
}

/// Everything the child reads, made before the clone.
struct Plan {
    path: CString,
    argv: Vec<*const libc::c_char>,
    envp: Vec<*const libc::c_char>,
    cwd: CString,
    /// stdin, stdout, stderr as they will be: /dev/null and the pipes' write ends.
    stdio: [libc::c_int; 3],
    setup: Setup,
    caller: libc::pid_t,
    /// The caller's signal mask, which the program gets once the handlers are reset.
    mask: libc::sigset_t,
    /// errno of the step that failed, 0 when the exec happened.
    error: AtomicI32,
}

/// The child's stack (it runs only system-call wrappers; glibc's posix_spawn uses less).
const STACK_BYTES: usize = 64 * 1024;

/// Starts `argv` (its first element found on the PATH of `env` unless it has a `/`) in `cwd`
/// with exactly the environment `env`, stdin from /dev/null, stdout and stderr piped.
pub fn spawn(
    argv: &[String],
    cwd: &Path,
    env: &[(OsString, OsString)],
    setup: Setup,
) -> std::io::Result<Program> {
    let invalid = |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidInput, what);
    let Some(first) = argv.first() else {
        return Err(invalid("the command is empty"));
    };
    let path_var = env.iter().rev().find(|(k, _)| k == "PATH").map(|(_, v)| v);
    // A path with a `/` is the kernel's to resolve, from `cwd` as execve sees it (not from ours,
    // where `find_on_path` would look).
    let path = if first.contains('/') {
        Path::new(first).to_path_buf()
    } else {
        crate::protocol::program::find_on_path(first, path_var.map(|v| v.as_os_str()))
            .ok_or_else(|| std::io::Error::from_raw_os_error(libc::ENOENT))?
    };
    let c = |bytes: &[u8]| CString::new(bytes).map_err(|_| invalid("a NUL byte in the command"));
    let args = argv
        .iter()
        .map(|a| c(a.as_bytes()))
        .collect::<Result<Vec<_>, _>>()?;
    let vars = env
        .iter()
        .map(|(k, v)| c(&[k.as_bytes(), b"=", v.as_bytes()].concat()))
        .collect::<Result<Vec<_>, _>>()?;
    let null = File::open("/dev/null")?;
    let (out_read, out_write) = pipe()?;
    let (err_read, err_write) = pipe()?;
    let mut plan = Plan {
        path: c(path.as_os_str().as_bytes())?,
        argv: pointers(&args),
        envp: pointers(&vars),
        cwd: c(cwd.as_os_str().as_bytes())?,
        stdio: [
            null.as_raw_fd(),
            out_write.as_raw_fd(),
            err_write.as_raw_fd(),
        ],
        setup,
        // SAFETY: getpid has no memory effects.
        caller: unsafe { libc::getpid() },
        // SAFETY: an all-zero sigset_t is a valid value, filled in below.
        mask: unsafe { std::mem::zeroed() },
        error: AtomicI32::new(0),
    };
    let pid = clone_and_exec(&mut plan)?;
    drop((null, out_write, err_write));
    let failed = plan.error.load(Ordering::SeqCst);
    if failed != 0 {
        let mut raw = 0;
        // SAFETY: waitpid writes only `raw`; the child exited before clone returned.
        unsafe { libc::waitpid(pid, &mut raw, 0) };
        return Err(std::io::Error::from_raw_os_error(failed));
    }
    Ok(Program {
        pid: pid as u32,
        stdout: Some(File::from(out_read)),
        stderr: Some(File::from(err_read)),
        status: None,
    })
}

/// Null-terminated pointers to `strings` (which must outlive them).
fn pointers(strings: &[CString]) -> Vec<*const libc::c_char> {
    strings
        .iter()
        .map(|s| s.as_ptr())
        .chain(std::iter::once(std::ptr::null()))
        .collect()
}

/// A pipe, both ends close-on-exec: (read, write).
fn pipe() -> std::io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 writes two descriptors into `fds`, which then belong to us alone.
    unsafe {
        if libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok((OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])))
    }
}

/// Clones a child that runs [`child_main`] on `plan`, with every signal blocked across the clone;
/// returns once the child has exec'd or exited.
fn clone_and_exec(plan: &mut Plan) -> std::io::Result<libc::pid_t> {
    let mut stack = vec![0u8; STACK_BYTES];
    // SAFETY: the stack top is inside `stack` and 16-byte aligned; `plan` and `stack` outlive the
    // child's use of them, since CLONE_VFORK returns only after its exec or exit; the signal
    // masks are this thread's own and restored before returning.
    unsafe {
        let top = stack.as_mut_ptr().add(STACK_BYTES);
        let top = top.sub(top as usize % 16) as *mut libc::c_void;
        let mut all: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_BLOCK, &all, &mut plan.mask);
        let pid = libc::clone(
            child_main,
            top,
            libc::CLONE_VM | libc::CLONE_VFORK | libc::SIGCHLD,
            plan as *mut Plan as *mut libc::c_void,
        );
        let cloned = if pid < 0 {
            Err(std::io::Error::last_os_error())
        } else {
            Ok(pid)
        };
        libc::pthread_sigmask(libc::SIG_SETMASK, &plan.mask, std::ptr::null_mut());
        cloned
    }
}

/// The child, until its exec: system calls only. A failed step leaves its errno in the plan
/// (shared memory) and exits 127.
extern "C" fn child_main(arg: *mut libc::c_void) -> libc::c_int {
    // SAFETY: `arg` is the `Plan` the caller keeps alive until this process execs or exits;
    // only system-call wrappers run here.
    unsafe {
        let plan = &*(arg as *const Plan);
        let fail = || fail(plan);
        reset_signal_handlers();
        if plan.setup.own_group && libc::setpgid(0, 0) != 0 {
            fail();
        }
        if plan.setup.die_with_caller {
            let sig = libc::SIGKILL as libc::c_ulong;
            if libc::prctl(libc::PR_SET_PDEATHSIG, sig, 0, 0, 0) != 0 {
                fail();
            }
            // The caller may have died before prctl.
            if libc::getppid() != plan.caller {
                libc::_exit(1);
            }
        }
        if let Some(bytes) = plan.setup.memory_limit {
            let limit = libc::rlimit {
                rlim_cur: bytes as libc::rlim_t,
                rlim_max: bytes as libc::rlim_t,
            };
            if libc::setrlimit(libc::RLIMIT_DATA, &limit) != 0 {
                fail();
            }
        }
        for (target, fd) in plan.stdio.iter().enumerate() {
            let target = target as libc::c_int;
            // dup2 onto itself would keep close-on-exec: clear it instead.
            let done = if *fd == target {
                libc::fcntl(target, libc::F_SETFD, 0)
            } else {
                libc::dup2(*fd, target)
            };
            if done < 0 {
                fail();
            }
        }
        // Nothing else of what sweep inherited (a descriptor its own parent left open) reaches
        // the program, as Python's subprocess closes them for `wandb agent`'s runs. Linux 5.9+;
        // on older kernels the descriptors stay, as std's `Command` leaves them.
        libc::syscall(
            libc::SYS_close_range,
            3 as libc::c_uint,
            libc::c_uint::MAX,
            0 as libc::c_uint,
        );
        if libc::chdir(plan.cwd.as_ptr()) != 0 {
            fail();
        }
        libc::pthread_sigmask(libc::SIG_SETMASK, &plan.mask, std::ptr::null_mut());
        libc::execve(plan.path.as_ptr(), plan.argv.as_ptr(), plan.envp.as_ptr());
        fail()
    }
}

/// Leaves errno in the plan for the caller and exits.
fn fail(plan: &Plan) -> ! {
    let errno = std::io::Error::last_os_error()
        .raw_os_error()
        .unwrap_or(libc::EIO);
    plan.error.store(errno, Ordering::SeqCst);
    // SAFETY: _exit ends this process only, running nothing of the caller's.
    unsafe { libc::_exit(127) }
}

/// Every signal the caller handles back to the default action, and SIGPIPE too (Rust programs
/// ignore it; std's `Command` restores it for the child, and so do we).
///
/// # Safety
/// Only sigaction calls; to be called in the child with every signal blocked.
unsafe fn reset_signal_handlers() {
    let mut default: libc::sigaction = std::mem::zeroed();
    default.sa_sigaction = libc::SIG_DFL;
    for sig in 1..=libc::SIGRTMAX() {
        if sig == libc::SIGKILL || sig == libc::SIGSTOP {
            continue;
        }
        let mut current: libc::sigaction = std::mem::zeroed();
        if libc::sigaction(sig, std::ptr::null(), &mut current) != 0 {
            continue;
        }
        let handled =
            current.sa_sigaction != libc::SIG_DFL && current.sa_sigaction != libc::SIG_IGN;
        if handled || sig == libc::SIGPIPE {
            libc::sigaction(sig, &default, std::ptr::null_mut());
        }
    }
}

/// The environment a program gets: this process's, with `added` set (later entries win).
pub fn environment(added: &[(&str, OsString)]) -> Vec<(OsString, OsString)> {
    let mut env: Vec<(OsString, OsString)> = std::env::vars_os().collect();
    for (k, v) in added {
        env.retain(|(have, _)| have != OsStr::new(k));
        env.push((OsString::from(k), v.clone()));
    }
    env
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn run(argv: &[&str], env: &[(&str, OsString)], setup: Setup) -> (String, String, i32) {
        let argv: Vec<String> = argv.iter().map(|s| s.to_string()).collect();
        let mut program = spawn(&argv, Path::new("/"), &environment(env), setup).unwrap();
        let (mut out, mut err) = (String::new(), String::new());
        program
            .stdout
            .take()
            .unwrap()
            .read_to_string(&mut out)
            .unwrap();
        program
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut err)
            .unwrap();
        let status = loop {
            if let Some(s) = program.try_wait().unwrap() {
                break s;
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        };
        (out, err, status.code().unwrap_or(-1))
    }

    #[test]
    fn the_program_gets_its_arguments_environment_folder_and_streams() {
        let env = [("SPAWN_TEST_VAR", OsString::from("a b"))];
        let (out, err, code) = run(
            &[
                "sh",
                "-c",
                "echo \"$1 $SPAWN_TEST_VAR $(pwd)\"; echo oops >&2; exit 3",
                "sh",
                "x",
            ],
            &env,
            Setup::default(),
        );
        assert_eq!(out, "x a b /\n");
        assert_eq!(err, "oops\n");
        assert_eq!(code, 3);
    }

    #[test]
    fn own_group_death_signal_and_limit_reach_the_program() {
        let setup = Setup {
            own_group: true,
            die_with_caller: true,
            memory_limit: Some(1 << 40),
        };
        // Field 5 of /proc/self/stat is the process group; the shell's own pid is $$.
        let (out, _, code) = run(
            &[
                "sh",
                "-c",
                "echo $$ $(cut -d' ' -f5 /proc/$$/stat); ulimit -d",
            ],
            &[],
            setup,
        );
        assert_eq!(code, 0);
        let words: Vec<&str> = out.split_whitespace().collect();
        assert_eq!(words[0], words[1], "leads its own group: {out}");
        assert_eq!(
            words[2],
            ((1u64 << 40) / 1024).to_string(),
            "RLIMIT_DATA in KiB"
        );
    }

    #[test]
    fn no_descriptor_of_ours_reaches_the_program() {
        // SAFETY: dup returns a new descriptor, without close-on-exec, which we close below.
        let stray = unsafe { libc::dup(1) };
        assert!(stray > 2);
        let (out, _, code) = run(&["sh", "-c", "ls /proc/$$/fd"], &[], Setup::default());
        // SAFETY: `stray` is ours.
        unsafe { libc::close(stray) };
        assert_eq!(code, 0);
        let fds: Vec<&str> = out.split_whitespace().collect();
        assert!(fds.contains(&"0") && fds.contains(&"2"), "{fds:?}");
        assert!(
            !fds.contains(&stray.to_string().as_str()),
            "{stray} reached it: {fds:?}"
        );
    }

    #[test]
    fn the_program_dies_with_the_thread_that_started_it() {
        let setup = Setup {
            die_with_caller: true,
            ..Setup::default()
        };
        let argv = vec!["sleep".to_string(), "60".to_string()];
        let mut program = std::thread::spawn(move || {
            spawn(&argv, Path::new("/"), &environment(&[]), setup).unwrap()
        })
        .join()
        .unwrap();
        let status = loop {
            if let Some(s) = program.try_wait().unwrap() {
                break s;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        };
        assert_eq!(status.signal(), Some(libc::SIGKILL));
    }

    #[test]
    fn a_program_that_cannot_start_is_an_error_not_a_process() {
        let argv = vec!["no-such-program-anywhere".to_string()];
        let e = spawn(&argv, Path::new("/"), &environment(&[]), Setup::default()).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ENOENT));
        let argv = vec!["/etc/passwd".to_string()];
        let e = spawn(&argv, Path::new("/"), &environment(&[]), Setup::default()).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EACCES));
        let argv = vec!["sh".to_string()];
        let e = spawn(
            &argv,
            Path::new("/no/such/dir"),
            &environment(&[]),
            Setup::default(),
        )
        .unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ENOENT));
    }

    #[test]
    fn later_environment_entries_win() {
        let env = environment(&[("A_VAR", "1".into()), ("A_VAR", "2".into())]);
        let values: Vec<_> = env.iter().filter(|(k, _)| k == "A_VAR").collect();
        assert_eq!(values.len(), 1);
        assert_eq!(values[0].1, "2");
    }
}
