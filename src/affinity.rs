//! CPU affinity: which CPUs this process may run on, how they group into
//! physical cores, a split of them into disjoint shares of whole cores, and
//! binding a child process to its share before it starts.
//!
//! The ranks of a multi-GPU job each drive their GPU from one busy host thread
//! (the training loop is host-bound), so two ranks whose threads meet on one
//! core, or on two hyperthreads of one, pace the whole job down. Binding each
//! rank to its own cores keeps them apart.

use std::collections::BTreeMap;
use std::process::Command;

use anyhow::{bail, Context, Result};

/// The CPUs this process may run on (Linux: its affinity mask; elsewhere
/// `0..available_parallelism`), ascending.
pub fn allowed() -> Result<Vec<usize>> {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: cpu_set_t is plain bits, so all-zero is a valid empty set,
        // and sched_getaffinity writes at most its size.
        let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
        let rc = unsafe { libc::sched_getaffinity(0, std::mem::size_of_val(&set), &mut set) };
        if rc != 0 {
            return Err(std::io::Error::last_os_error())
                .context("reading this process's CPU affinity");
        }
        Ok((0..libc::CPU_SETSIZE as usize)
            .filter(|&cpu| unsafe { libc::CPU_ISSET(cpu, &set) })
            .collect())
    }
    #[cfg(not(target_os = "linux"))]
    {
        let n = std::thread::available_parallelism().map_or(1, |n| n.get());
        Ok((0..n).collect())
    }
}

/// Parses a CPU list as Linux writes it (`taskset -c`, sysfs): `0-3,8,10-11`.
pub fn parse_list(list: &str) -> Result<Vec<usize>> {
    let mut cpus = Vec::new();
    for part in list.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let number = |s: &str| {
            s.trim()
                .parse::<usize>()
                .with_context(|| format!("\"{s}\" in the CPU list \"{list}\" is not a CPU number"))
        };
        match part.split_once('-') {
            Some((lo, hi)) => {
                let (lo, hi) = (number(lo)?, number(hi)?);
                if lo > hi {
                    bail!("\"{part}\" in the CPU list \"{list}\" runs backwards");
                }
                cpus.extend(lo..=hi);
            }
            None => cpus.push(number(part)?),
        }
    }
    if cpus.is_empty() {
        bail!("the CPU list \"{list}\" names no CPU");
    }
    cpus.sort_unstable();
    cpus.dedup();
    Ok(cpus)
}

/// Writes `cpus` (ascending) as a CPU list, runs joined: `0-3,8`.
pub fn format_list(cpus: &[usize]) -> String {
    let mut parts = Vec::new();
    let mut i = 0;
    while i < cpus.len() {
        let mut j = i;
        while j + 1 < cpus.len() && cpus[j + 1] == cpus[j] + 1 {
            j += 1;
        }
        parts.push(if i == j {
            cpus[i].to_string()
        } else {
            format!("{}-{}", cpus[i], cpus[j])
        });
        i = j + 1;
    }
    parts.join(",")
}

/// Groups `cpus` into physical cores (hyperthreads of one core together), in
/// the order of each core's lowest CPU. `core_of(cpu)` names a CPU's core;
/// [`sysfs_core`] reads it from Linux.
pub fn cores(cpus: &[usize], core_of: impl Fn(usize) -> Option<(u32, u32)>) -> Vec<Vec<usize>> {
    let mut by_core: BTreeMap<(u32, u32), Vec<usize>> = BTreeMap::new();
    let mut alone = Vec::new();
    for &cpu in cpus {
        match core_of(cpu) {
            Some(core) => by_core.entry(core).or_default().push(cpu),
            None => alone.push(vec![cpu]),
        }
    }
    let mut groups: Vec<Vec<usize>> = by_core.into_values().chain(alone).collect();
    groups.sort_by_key(|g| g[0]);
    groups
}

/// A CPU's (package, core) as Linux reports it under
/// `/sys/devices/system/cpu/cpuN/topology`, if it does.
pub fn sysfs_core(cpu: usize) -> Option<(u32, u32)> {
    let read = |name: &str| -> Option<u32> {
        std::fs::read_to_string(format!("/sys/devices/system/cpu/cpu{cpu}/topology/{name}"))
            .ok()?
            .trim()
            .parse()
            .ok()
    };
    Some((read("physical_package_id")?, read("core_id")?))
}

/// Splits `cores` into `n` disjoint shares of whole cores, in order, sizes
/// differing by at most one core; `None` when there are fewer cores than `n`.
pub fn split(cores: &[Vec<usize>], n: usize) -> Option<Vec<Vec<usize>>> {
    if n == 0 || cores.len() < n {
        return None;
    }
    let (each, extra) = (cores.len() / n, cores.len() % n);
    let mut shares = Vec::with_capacity(n);
    let mut next = 0;
    for i in 0..n {
        let take = each + usize::from(i < extra);
        let mut share: Vec<usize> = cores[next..next + take].concat();
        share.sort_unstable();
        shares.push(share);
        next += take;
    }
    Some(shares)
}

/// Makes the process `cmd` starts run only on `cpus` (Linux; elsewhere nothing).
pub fn bind(cmd: &mut Command, cpus: &[usize]) -> Result<()> {
    #[cfg(target_os = "linux")]
    {
        use std::os::unix::process::CommandExt;
        // SAFETY: as in `allowed`; CPU_SET only sets a bit below CPU_SETSIZE.
        let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
        for &cpu in cpus {
            if cpu >= libc::CPU_SETSIZE as usize {
                bail!(
                    "CPU {cpu} is beyond the {} CPUs Linux can bind to",
                    libc::CPU_SETSIZE
                );
            }
            unsafe { libc::CPU_SET(cpu, &mut set) };
        }
        // SAFETY: the set is built above; the child only makes one system
        // call with it, which allocates nothing and is async-signal-safe, as
        // pre_exec requires.
        unsafe {
            cmd.pre_exec(move || {
                if libc::sched_setaffinity(0, std::mem::size_of_val(&set), &set) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (cmd, cpus);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_parse_and_format_round_trip() {
        assert_eq!(
            parse_list("0-3,8, 10-11").unwrap(),
            vec![0, 1, 2, 3, 8, 10, 11]
        );
        assert_eq!(parse_list("5,1,1").unwrap(), vec![1, 5]);
        assert_eq!(format_list(&[0, 1, 2, 3, 8, 10, 11]), "0-3,8,10-11");
        assert_eq!(format_list(&[4]), "4");
        for bad in ["", "a", "3-1", "1-", ","] {
            assert!(parse_list(bad).is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn hyperthreads_of_a_core_stay_in_one_share() {
        // 8 CPUs, 4 cores; Linux numbers the second hyperthreads 4-7.
        let cpus: Vec<usize> = (0..8).collect();
        let core_of = |cpu: usize| Some((0, (cpu % 4) as u32));
        let groups = cores(&cpus, core_of);
        assert_eq!(groups, vec![vec![0, 4], vec![1, 5], vec![2, 6], vec![3, 7]]);
        let shares = split(&groups, 2).unwrap();
        assert_eq!(shares, vec![vec![0, 1, 4, 5], vec![2, 3, 6, 7]]);
        // Uneven: 3 cores over 2 ranks; the first share takes the extra core.
        let shares = split(&groups[..3], 2).unwrap();
        assert_eq!(shares, vec![vec![0, 1, 4, 5], vec![2, 6]]);
        assert!(split(&groups, 5).is_none());
        // Without topology every CPU is its own core.
        assert_eq!(cores(&[2, 0], |_| None), vec![vec![0], vec![2]]);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn a_bound_child_runs_on_its_share() {
        let here = allowed().unwrap();
        let cpu = *here.last().unwrap();
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "grep Cpus_allowed_list /proc/self/status"]);
        bind(&mut cmd, &[cpu]).unwrap();
        let out = cmd.output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert_eq!(
            text.split_whitespace().last(),
            Some(cpu.to_string().as_str()),
            "{text}"
        );
    }
}
