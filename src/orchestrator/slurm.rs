//! Trials as Slurm batch jobs (`resources: {executor: slurm}`). Each trial is one job that runs
//! `sweep train TRIAL_DIR` on whichever node Slurm picks, so the results folder, the data, the
//! model and the `sweep` binary must be on a file system the nodes share.
//!
//! The pure part derives the batch script and sbatch's argument vector, reads sbatch, squeue and
//! scontrol output, and maps Slurm's job states to a trial's end. The I/O part submits
//! (`sbatch`, argument vectors only: nothing of ours goes through a shell but the batch script,
//! whose only inputs are quoted absolute paths and numbers), follows jobs by polling `squeue`
//! (no accounting database assumed; `scontrol show job` for a job squeue no longer lists),
//! forwards the progress the trial prints into its `slurm-JOB.out`, and cancels (`scancel`).
//! Slurm's state says that a job ended and how (`Exit`); the trial folder's result.json, which
//! the run loop reads, says how the trial itself ended.

use std::collections::BTreeMap;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use crate::orchestrator::decide::Placement;
use crate::orchestrator::executor::{Executor, Exit, Reclaimed, Report, StartError, Stop};
use crate::plan::slurm::JobRequest;
use crate::protocol::journal::Handle;
use crate::protocol::trial::{ProgressEvent, TrialResult};
use crate::spec::SweepSpec;

/// The batch script's name in the trial folder (a record of what was submitted).
pub const SCRIPT: &str = "job.sh";
/// The signal a job gets 90 s before its time limit, to save and requeue.
pub const PRE_TIMEOUT_SIGNAL: &str = "--signal=B:USR1@90";

/// What every job of a sweep shares.
#[derive(Debug, Clone, PartialEq)]
pub struct SlurmSettings {
    pub sweep: String,
    /// The `sweep` executable the jobs run (absolute, on the shared file system).
    pub program: PathBuf,
    pub partition: Option<String>,
    pub account: Option<String>,
    pub qos: Option<String>,
    pub extra: Vec<String>,
}

impl SlurmSettings {
    pub fn from_spec(spec: &SweepSpec, program: PathBuf) -> Self {
        let r = &spec.resources;
        Self {
            sweep: spec.name.clone(),
            program,
            partition: r.partition.clone(),
            account: r.account.clone(),
            qos: r.qos.clone(),
            extra: r.sbatch_args.clone().unwrap_or_default(),
        }
    }

    /// The job name of a trial: `sweep-NAME-0007`.
    pub fn job_name(&self, trial: usize) -> String {
        format!("sweep-{}-{trial:04}", self.sweep)
    }
}

/// `text` as one word for a POSIX shell.
pub fn shell_quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', r"'\''"))
}

/// A path in a Slurm filename pattern (`--output`), with `%` kept literal.
pub fn slurm_pattern_path(path: &Path) -> String {
    path.display().to_string().replace('%', "%%")
}

/// The batch script of a trial: records the GPUs Slurm gave the job in train.log, sets the
/// trial's threads (and, for CPU stand-ins under `memory_per_device`, its memory limit), and
/// execs `sweep train DIR`, so the pre-timeout signal reaches the trainer itself.
pub fn batch_script(program: &Path, dir: &Path, placement: &Placement) -> String {
    let threads = placement.threads.max(1);
    let mut s = String::from("#!/bin/sh\n# Written by sweep: one trial as one Slurm job.\n");
    s.push_str("echo \"slurm job $SLURM_JOB_ID on $SLURMD_NODENAME (restart ${SLURM_RESTART_COUNT:-0}): CUDA_VISIBLE_DEVICES=${CUDA_VISIBLE_DEVICES-unset}\" >&2\n");
    if let Some(bytes) = placement.memory_bytes {
        // ulimit -d counts KiB; few malloc arenas so the limit measures the trial's data.
        s.push_str(&format!(
            "ulimit -d {}\nexport MALLOC_ARENA_MAX=2\n",
            bytes / 1024
        ));
    }
    s.push_str(&format!(
        "export RAYON_NUM_THREADS={threads} CANDLE_NUM_THREADS={threads}\n"
    ));
    // A requeued job starts here again: the end an earlier run of it wrote (stopped on the
    // pre-timeout signal) is not this run's.
    s.push_str(&format!(
        "rm -f {}\n",
        shell_quote(&dir.join(TrialResult::FILE).display().to_string())
    ));
    s.push_str(&format!(
        "exec {} train {}\n",
        shell_quote(&program.display().to_string()),
        shell_quote(&dir.display().to_string())
    ));
    s
}

/// sbatch's arguments for one trial: the derived options, the sweep's settings, the user's
/// extra arguments, then the batch script.
pub fn sbatch_argv(
    settings: &SlurmSettings,
    trial: usize,
    dir: &Path,
    job: &JobRequest,
    script: &Path,
) -> Vec<String> {
    let mut argv = vec![
        "--parsable".to_string(),
        format!("--job-name={}", settings.job_name(trial)),
        format!("--chdir={}", dir.display()),
        format!(
            "--output={}",
            slurm_pattern_path(&dir.join("slurm-%j.out")).replace("%%j", "%j")
        ),
        format!("--error={}", slurm_pattern_path(&dir.join("train.log"))),
        "--open-mode=append".to_string(),
        "--nodes=1".to_string(),
        "--ntasks=1".to_string(),
        format!("--gres=gpu:{}", job.gpus),
        format!("--cpus-per-task={}", job.cpus.max(1)),
        format!("--mem={}M", job.memory_mb.max(1)),
        "--requeue".to_string(),
        PRE_TIMEOUT_SIGNAL.to_string(),
    ];
    if let Some(t) = job.time_s {
        argv.push(format!("--time={}", crate::spec::slurm::format_time(t)));
    }
    for (flag, value) in [
        ("--partition", &settings.partition),
        ("--account", &settings.account),
        ("--qos", &settings.qos),
    ] {
        if let Some(v) = value {
            argv.push(format!("{flag}={v}"));
        }
    }
    argv.extend(settings.extra.iter().cloned());
    argv.push(script.display().to_string());
    argv
}

/// sbatch answered something that is not a job id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("sbatch answered `{0}`, not a job id")]
pub struct NotAJobId(pub String);

/// The job id in `sbatch --parsable`'s answer (`12` or `12;cluster`).
pub fn parse_submission(stdout: &str) -> Result<u32, NotAJobId> {
    let first = stdout.trim().split(';').next().unwrap_or("").trim();
    first
        .parse()
        .map_err(|_| NotAJobId(stdout.trim().to_string()))
}

/// squeue's format for `parse_squeue`: job id, state, reason.
pub const SQUEUE_FORMAT: &str = "%i|%T|%r";

/// (job, state, reason) per line of `squeue -h -o SQUEUE_FORMAT`.
pub fn parse_squeue(text: &str) -> BTreeMap<u32, (String, String)> {
    text.lines()
        .filter_map(|line| {
            let mut f = line.split('|').map(str::trim);
            let id = f.next()?.parse().ok()?;
            let state = f.next()?.to_string();
            let reason = f.next().unwrap_or("").to_string();
            Some((id, (state, reason)))
        })
        .collect()
}

/// `Key=Value` pairs of `scontrol show job -o`.
pub fn parse_scontrol(text: &str) -> BTreeMap<String, String> {
    text.split_whitespace()
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Pending reasons that do not clear by waiting: the request does not fit the partition, or the
/// nodes it needs are down, drained or reserved.
pub fn is_hopeless_pending(reason: &str) -> bool {
    [
        "PartitionConfig",
        "ReqNodeNotAvail",
        "PartitionNodeLimit",
        "PartitionTimeLimit",
        "PartitionDown",
        "PartitionInactive",
        "BadConstraints",
        "InvalidAccount",
        "InvalidQOS",
        "AccountNotAllowed",
        "QOSNotAllowed",
        "NodeDown",
        "DependencyNeverSatisfied",
        "JobHeldAdmin",
        "JobHeldUser",
    ]
    .iter()
    .any(|r| reason.starts_with(r))
}

/// A job as Slurm reports it.
#[derive(Debug, Clone, PartialEq)]
pub enum JobState {
    /// Pending, running, requeued, completing...: not ended. Pending with a reason that never
    /// clears carries it.
    Active { hopeless: Option<String> },
    /// Ended, and how as far as Slurm knows (result.json says how the trial itself ended).
    Ended(Exit),
}

/// What a Slurm state (and its reason, and `scontrol`'s ExitCode when known) means for a trial.
pub fn job_state(job: u32, state: &str, reason: &str, exit_code: Option<&str>) -> JobState {
    let state = state.trim_end_matches('+');
    let exit = || {
        exit_code
            .map(|c| match c.split_once(':') {
                Some((_, sig)) if sig != "0" => format!(", killed by signal {sig}"),
                Some((code, _)) => format!(", exit status {code}"),
                None => format!(", exit code {c}"),
            })
            .unwrap_or_default()
    };
    let ended = |what: String| JobState::Ended(Exit::Other(what));
    match state {
        "PENDING" => JobState::Active {
            hopeless: is_hopeless_pending(reason)
                .then(|| format!("Slurm job {job} pending: {reason}, which does not clear by waiting (release the job, bring the nodes back or fix the partition; or scancel it)")),
        },
        "RUNNING" | "CONFIGURING" | "COMPLETING" | "REQUEUED" | "REQUEUE_FED"
        | "REQUEUE_HOLD" | "RESIZING" | "SUSPENDED" | "STAGE_OUT" | "SIGNALING"
        | "RESV_DEL_HOLD" | "STOPPED" => JobState::Active { hopeless: None },
        "COMPLETED" => JobState::Ended(Exit::Success),
        "OUT_OF_MEMORY" => JobState::Ended(Exit::OutOfMemory(format!(
            "out of memory: Slurm job {job} exceeded its --mem (OUT_OF_MEMORY{})",
            exit()
        ))),
        "TIMEOUT" => ended(format!("Slurm job {job} reached its time limit (TIMEOUT)")),
        "NODE_FAIL" => ended(format!("Slurm job {job}'s node failed (NODE_FAIL)")),
        "PREEMPTED" => ended(format!("Slurm job {job} was preempted (PREEMPTED)")),
        "CANCELLED" => ended(format!(
            "Slurm job {job} was cancelled (CANCELLED{})",
            if reason.is_empty() || reason == "None" {
                String::new()
            } else {
                format!(", reason {reason}")
            }
        )),
        "BOOT_FAIL" => ended(format!("Slurm job {job}'s node failed to boot (BOOT_FAIL)")),
        "DEADLINE" => ended(format!("Slurm job {job} missed its deadline (DEADLINE)")),
        "FAILED" => ended(format!("Slurm job {job} failed (FAILED{})", exit())),
        other => ended(format!("Slurm job {job} ended as {other}{}", exit())),
    }
}

/// A job being followed.
struct Watched {
    trial: usize,
    dir: PathBuf,
    /// Bytes of its slurm-JOB.out already read.
    read: u64,
    /// The hopeless pending reason last reported.
    waiting: Option<String>,
    /// Polls in a row that saw the job ended without success (see `FAILED_POLLS`).
    failed_polls: u32,
}

/// A job seen ended without success is believed only on this many polls in a row (a second
/// apart). Why: a job that requeues itself (`scontrol requeue` on the pre-timeout signal, then
/// exit) can show a failed state for a moment before Slurm puts it back in the queue; judged on
/// that moment, a trial that will continue was recorded as failed (seen under load).
const FAILED_POLLS: u32 = 3;

type Jobs = Arc<Mutex<BTreeMap<u32, Watched>>>;

/// Trials as Slurm batch jobs; reports come from a thread polling squeue every second.
pub struct SlurmExecutor {
    settings: SlurmSettings,
    jobs: Jobs,
    /// trial -> its current job.
    by_trial: BTreeMap<usize, u32>,
}

impl SlurmExecutor {
    pub fn new(settings: SlurmSettings) -> (Self, Receiver<(usize, Report)>) {
        let (tx, rx) = mpsc::channel();
        let jobs: Jobs = Arc::new(Mutex::new(BTreeMap::new()));
        let weak = Arc::downgrade(&jobs);
        std::thread::spawn(move || poll_loop(weak, tx));
        (
            Self {
                settings,
                jobs,
                by_trial: BTreeMap::new(),
            },
            rx,
        )
    }

    fn watch(&mut self, job: u32, trial: usize, dir: &Path, read: u64) {
        self.by_trial.insert(trial, job);
        if let Ok(mut jobs) = self.jobs.lock() {
            jobs.insert(
                job,
                Watched {
                    trial,
                    dir: dir.to_path_buf(),
                    read,
                    waiting: None,
                    failed_polls: 0,
                },
            );
        }
    }

    /// An active job of this trial (pending, running, requeued) that was submitted but never
    /// journalled: found by its job name and working directory.
    fn find_active(&self, trial: usize, dir: &Path) -> Option<u32> {
        let out = Command::new("squeue")
            .args(["--me", "-h", "-n"])
            .arg(self.settings.job_name(trial))
            .args(["-o", "%i|%T|%Z"])
            .output()
            .ok()?;
        String::from_utf8_lossy(&out.stdout).lines().find_map(|l| {
            let f: Vec<&str> = l.split('|').collect();
            let active = matches!(job_state(0, f.get(1)?, "", None), JobState::Active { .. });
            (active && Path::new(f.get(2)?) == dir).then(|| f[0].parse().ok())?
        })
    }
}

impl Executor for SlurmExecutor {
    fn start(
        &mut self,
        trial: usize,
        dir: &Path,
        placement: &Placement,
    ) -> Result<Handle, StartError> {
        let io = |what: String| move |source| StartError::Io { what, source };
        let job = placement.job.as_ref().ok_or_else(|| {
            StartError::Rejected("internal: a Slurm trial without a job request".into())
        })?;
        let script = dir.join(SCRIPT);
        std::fs::write(
            &script,
            batch_script(&self.settings.program, dir, placement),
        )
        .map_err(io(format!("writing {}", script.display())))?;
        let argv = sbatch_argv(&self.settings, trial, dir, job, &script);
        let out = Command::new("sbatch").args(&argv).output().map_err(io(
            "running sbatch (is Slurm's client installed here?)".into(),
        ))?;
        if !out.status.success() {
            return Err(StartError::Rejected(format!(
                "sbatch refused the job: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        let id = parse_submission(&String::from_utf8_lossy(&out.stdout))
            .map_err(|e| StartError::Rejected(e.to_string()))?;
        self.watch(id, trial, dir, 0);
        Ok(Handle::SlurmJob(id))
    }

    fn stop(&mut self, trial: usize, _how: Stop) {
        // scancel: SIGTERM, then SIGKILL after the cluster's KillWait; either way the trial
        // continues from its last resume point when the sweep resumes.
        if let Some(job) = self.by_trial.get(&trial) {
            let _ = Command::new("scancel").arg(job.to_string()).output();
        }
    }

    fn reclaim(&mut self, trial: usize, handle: Option<Handle>, dir: &Path) -> Reclaimed {
        let job = match handle {
            Some(Handle::SlurmJob(job)) => Some(job),
            _ => self.find_active(trial, dir),
        };
        let Some(job) = job else {
            return Reclaimed::Gone;
        };
        // Progress printed before the re-attachment is not replayed.
        let read = std::fs::metadata(output_file(dir, job))
            .map(|m| m.len())
            .unwrap_or(0);
        self.watch(job, trial, dir, read);
        Reclaimed::Reattached(Handle::SlurmJob(job))
    }
}

fn output_file(dir: &Path, job: u32) -> PathBuf {
    dir.join(format!("slurm-{job}.out"))
}

/// Polls until the executor is dropped or the run loop stops listening.
fn poll_loop(jobs: Weak<Mutex<BTreeMap<u32, Watched>>>, tx: Sender<(usize, Report)>) {
    loop {
        std::thread::sleep(Duration::from_millis(1000));
        let Some(jobs) = jobs.upgrade() else { return };
        if poll_once(&jobs, &tx).is_err() {
            return;
        }
    }
}

/// One round: progress from each job's output file, then its state. Err when the receiver is gone.
fn poll_once(jobs: &Jobs, tx: &Sender<(usize, Report)>) -> Result<(), ()> {
    let Ok(mut jobs) = jobs.lock() else {
        return Err(());
    };
    if jobs.is_empty() {
        return Ok(());
    }
    // squeue failing (slurmctld restarting, a network hiccup) is no news about any job.
    let Ok(out) = Command::new("squeue")
        .args(["--me", "-h", "--states=all", "-o", SQUEUE_FORMAT])
        .output()
    else {
        return Ok(());
    };
    if !out.status.success() {
        return Ok(());
    }
    let listed = parse_squeue(&String::from_utf8_lossy(&out.stdout));
    let mut ended = Vec::new();
    for (job, w) in jobs.iter_mut() {
        forward_progress(*job, w, tx)?;
        let state = match listed.get(job) {
            Some((state, reason)) => {
                let s = job_state(*job, state, reason, None);
                match s {
                    JobState::Ended(ref exit) if *exit != Exit::Success => {
                        // The exit code, from scontrol, for the reason.
                        let fields = scontrol_job(*job).unwrap_or_default();
                        job_state(
                            *job,
                            state,
                            reason,
                            fields.get("ExitCode").map(String::as_str),
                        )
                    }
                    s => s,
                }
            }
            None => match scontrol_job(*job) {
                Some(f) => job_state(
                    *job,
                    f.get("JobState").map(String::as_str).unwrap_or(""),
                    f.get("Reason").map(String::as_str).unwrap_or(""),
                    f.get("ExitCode").map(String::as_str),
                ),
                // Past MinJobAge: the accounting database when there is one.
                None => match sacct_job(*job) {
                    Some((state, exit)) => job_state(*job, &state, "", Some(&exit)),
                    // Slurm forgot the job: the trial folder tells.
                    None => JobState::Ended(if w.dir.join(TrialResult::FILE).exists() {
                        Exit::Success
                    } else {
                        Exit::Other(format!(
                            "Slurm no longer knows job {job} and {} has no result",
                            w.dir.display()
                        ))
                    }),
                },
            },
        };
        if matches!(&state, JobState::Ended(exit) if *exit != Exit::Success) {
            w.failed_polls += 1;
            if w.failed_polls < FAILED_POLLS {
                continue;
            }
        } else {
            w.failed_polls = 0;
        }
        match state {
            JobState::Active { hopeless } => {
                if hopeless.is_some() && hopeless != w.waiting {
                    w.waiting = hopeless.clone();
                    if let Some(reason) = hopeless {
                        tx.send((w.trial, Report::Waiting(reason)))
                            .map_err(|_| ())?;
                    }
                }
            }
            JobState::Ended(exit) => {
                forward_progress(*job, w, tx)?;
                let result = w.dir.join(TrialResult::FILE);
                let exit = match exit {
                    Exit::Success if !result.exists() => Exit::Other(format!(
                        "Slurm job {job} COMPLETED but {} is missing: is the results folder on a file system the compute nodes share?",
                        result.display()
                    )),
                    exit => exit,
                };
                tx.send((w.trial, Report::Exited(exit))).map_err(|_| ())?;
                ended.push(*job);
            }
        }
    }
    for job in ended {
        jobs.remove(&job);
    }
    Ok(())
}

/// New progress lines of a job's output file.
fn forward_progress(job: u32, w: &mut Watched, tx: &Sender<(usize, Report)>) -> Result<(), ()> {
    let Ok(mut file) = std::fs::File::open(output_file(&w.dir, job)) else {
        return Ok(());
    };
    if file.seek(SeekFrom::Start(w.read)).is_err() {
        return Ok(());
    }
    let mut text = String::new();
    if file.read_to_string(&mut text).is_err() {
        return Ok(());
    }
    // Only whole lines; a line still being written is read next time.
    let complete = text.rfind('\n').map(|i| i + 1).unwrap_or(0);
    for line in text[..complete].lines() {
        if let Ok(event) = serde_json::from_str::<ProgressEvent>(line) {
            tx.send((w.trial, Report::Progress(Box::new(event))))
                .map_err(|_| ())?;
        }
    }
    w.read += complete as u64;
    Ok(())
}

/// The state and exit code in `sacct -n -X -P -o State,ExitCode -j JOB` (the first line).
pub fn parse_sacct(text: &str) -> Option<(String, String)> {
    let line = text.lines().find(|l| !l.trim().is_empty())?;
    let (state, exit) = line.trim().split_once('|')?;
    // `CANCELLED by 0`: the state is the first word.
    let state = state.split_whitespace().next()?.to_string();
    Some((state, exit.to_string()))
}

/// A job's end from the accounting database, when the cluster has one (sacct fails without).
fn sacct_job(job: u32) -> Option<(String, String)> {
    let out = Command::new("sacct")
        .args(["-n", "-X", "-P", "-o", "State,ExitCode", "-j"])
        .arg(job.to_string())
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    parse_sacct(&String::from_utf8_lossy(&out.stdout))
}

/// `scontrol show job -o JOB`, or None when Slurm does not know it.
fn scontrol_job(job: u32) -> Option<BTreeMap<String, String>> {
    let out = Command::new("scontrol")
        .args(["show", "job", "-o"])
        .arg(job.to_string())
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| parse_scontrol(&String::from_utf8_lossy(&out.stdout)))
}

/// Asks Slurm to requeue the job this process runs in (after the trial saved on the
/// pre-timeout signal). False when not in a Slurm job or scontrol failed.
pub fn requeue_own_job() -> bool {
    let Ok(job) = std::env::var("SLURM_JOB_ID") else {
        return false;
    };
    Command::new("scontrol")
        .args(["requeue", &job])
        .status()
        .is_ok_and(|s| s.success())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> SlurmSettings {
        SlurmSettings {
            sweep: "s".into(),
            program: "/opt/sweep".into(),
            partition: Some("gpu".into()),
            account: None,
            qos: Some("high".into()),
            extra: vec!["--constraint=a100".into()],
        }
    }

    fn placement(memory_bytes: Option<u64>) -> Placement {
        Placement {
            physical: vec!["slurm:gpu:2".into()],
            devices: vec!["cpu".into(), "cpu".into()],
            threads: 4,
            cuda_visible_devices: None,
            memory_bytes,
            job: Some(JobRequest {
                gpus: 2,
                cpus: 4,
                memory_mb: 900,
                time_s: Some(3600),
            }),
        }
    }

    #[test]
    fn sbatch_gets_the_derived_options_as_one_argument_each() {
        let dir = Path::new("/shared/res 1/trials/0003");
        let p = placement(None);
        let argv = sbatch_argv(
            &settings(),
            3,
            dir,
            p.job.as_ref().unwrap(),
            &dir.join(SCRIPT),
        );
        for want in [
            "--parsable",
            "--job-name=sweep-s-0003",
            "--chdir=/shared/res 1/trials/0003",
            "--output=/shared/res 1/trials/0003/slurm-%j.out",
            "--error=/shared/res 1/trials/0003/train.log",
            "--gres=gpu:2",
            "--cpus-per-task=4",
            "--mem=900M",
            "--time=01:00:00",
            "--partition=gpu",
            "--qos=high",
            "--requeue",
            "--signal=B:USR1@90",
            "--constraint=a100",
        ] {
            assert!(
                argv.iter().any(|a| a == want),
                "{want} missing from {argv:?}"
            );
        }
        assert!(!argv.iter().any(|a| a.starts_with("--account")));
        assert_eq!(argv.last().unwrap(), "/shared/res 1/trials/0003/job.sh");
        let odd = sbatch_argv(
            &settings(),
            1,
            Path::new("/r/100%"),
            p.job.as_ref().unwrap(),
            Path::new("/r/100%/job.sh"),
        );
        assert!(
            odd.contains(&"--output=/r/100%%/slurm-%j.out".to_string()),
            "{odd:?}"
        );
    }

    #[test]
    fn the_batch_script_quotes_paths_and_execs_the_trainer() {
        let s = batch_script(
            Path::new("/opt/my sweep/sweep"),
            Path::new("/r/it's/0001"),
            &placement(Some(64 * 1024 * 1024)),
        );
        assert!(
            s.ends_with("exec '/opt/my sweep/sweep' train '/r/it'\\''s/0001'\n"),
            "{s}"
        );
        assert!(s.contains("ulimit -d 65536\n"), "{s}");
        assert!(s.contains("RAYON_NUM_THREADS=4"), "{s}");
        assert!(s.contains("rm -f '/r/it'\\''s/0001/result.json'\n"), "{s}");
        assert!(s.contains("CUDA_VISIBLE_DEVICES=${CUDA_VISIBLE_DEVICES-unset}"));
        assert!(
            !batch_script(Path::new("/s"), Path::new("/d"), &placement(None)).contains("ulimit")
        );
    }

    #[test]
    fn slurm_answers_are_read() {
        assert_eq!(parse_submission("42\n"), Ok(42));
        assert_eq!(parse_submission("42;cluster\n"), Ok(42));
        assert!(parse_submission("Submitted batch job 42").is_err());
        let q = parse_squeue(
            "12|RUNNING|None\n13|PENDING|ReqNodeNotAvail, UnavailableNodes:n1\njunk\n",
        );
        assert_eq!(q.len(), 2);
        assert_eq!(q[&13].0, "PENDING");
        assert!(q[&13].1.starts_with("ReqNodeNotAvail"));
        assert_eq!(
            parse_sacct("CANCELLED by 0|0:15\n"),
            Some(("CANCELLED".into(), "0:15".into()))
        );
        assert_eq!(parse_sacct(""), None);
        let f = parse_scontrol(
            "JobId=12 JobName=x JobState=FAILED Reason=NonZeroExitCode ExitCode=1:0",
        );
        assert_eq!(f["JobState"], "FAILED");
        assert_eq!(f["ExitCode"], "1:0");
    }

    #[test]
    fn slurm_states_map_to_a_trials_end() {
        let active = |s: &str, r: &str| job_state(7, s, r, None);
        assert_eq!(
            active("RUNNING", "None"),
            JobState::Active { hopeless: None }
        );
        assert_eq!(
            active("REQUEUED", "None"),
            JobState::Active { hopeless: None }
        );
        assert_eq!(
            active("PENDING", "Resources"),
            JobState::Active { hopeless: None }
        );
        assert_eq!(
            active("PENDING", "Priority"),
            JobState::Active { hopeless: None }
        );
        match active("PENDING", "ReqNodeNotAvail, UnavailableNodes:n1") {
            JobState::Active { hopeless: Some(r) } => {
                assert!(r.contains("ReqNodeNotAvail") && r.contains("job 7"), "{r}")
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            active("PENDING", "PartitionConfig"),
            JobState::Active { hopeless: Some(_) }
        ));
        assert_eq!(active("COMPLETED", "None"), JobState::Ended(Exit::Success));
        let err = |s: &str, code: Option<&str>| match job_state(7, s, "None", code) {
            JobState::Ended(Exit::Other(e)) => e,
            other => panic!("{other:?}"),
        };
        // Over its --mem: an out-of-memory end, said by Slurm, not by the trial.
        match job_state(7, "OUT_OF_MEMORY", "None", Some("0:125")) {
            JobState::Ended(Exit::OutOfMemory(why)) => {
                assert!(why.contains("exceeded its --mem"), "{why}")
            }
            other => panic!("{other:?}"),
        }
        assert!(err("TIMEOUT", None).contains("time limit"));
        assert!(err("NODE_FAIL", None).contains("NODE_FAIL"));
        assert!(err("PREEMPTED", None).contains("preempted"));
        assert_eq!(
            err("CANCELLED", None),
            "Slurm job 7 was cancelled (CANCELLED)"
        );
        assert!(err("CANCELLED+", None).contains("CANCELLED"));
        assert_eq!(
            err("FAILED", Some("1:0")),
            "Slurm job 7 failed (FAILED, exit status 1)"
        );
        assert_eq!(
            err("FAILED", Some("0:6")),
            "Slurm job 7 failed (FAILED, killed by signal 6)"
        );
        assert!(err("BOOT_FAIL", None).contains("BOOT_FAIL"));
    }
}
