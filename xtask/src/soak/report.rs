//! The soak's summary table, its verdict (the list of reasons it failed) and its JSON.

use serde_json::{json, Value};

use super::Run;

/// One before/after count.
struct Check {
    name: String,
    before: String,
    after: String,
    judged: bool,
    ok: bool,
}

fn checks(r: &Run) -> Vec<Check> {
    let (b, a) = (&r.before, &r.after);
    let strict = r.opts.strict_host;
    let c = |name: &str, before: String, after: String, judged: bool, ok: bool| Check { name: name.into(), before, after, judged, ok };
    let n = |v: usize| v.to_string();
    let mut v = vec![
        c("processes in the soak's cgroups", n(b.pids_in_root.len()), n(a.pids_in_root.len()), true, a.pids_in_root.is_empty()),
        c("fixture processes (comm)", n(b.fixture_pids.len()), n(a.fixture_pids.len()), true, a.fixture_pids.is_empty()),
        c(
            "instance pids seen, still alive",
            format!("{} seen", r.instance_pids_seen),
            n(r.instance_pids_alive.len()),
            true,
            r.instance_pids_alive.is_empty(),
        ),
        c("cgroups under the root, cgroup2", n(b.cgroups_v2), n(a.cgroups_v2), true, a.cgroups_v2 == 0),
    ];
    for (h, after) in &a.cgroups_v1 {
        let before = b.cgroups_v1.get(h).copied().unwrap_or(0);
        v.push(c(&format!("cgroups under the root, v1 {h}"), n(before), n(*after), true, *after == 0));
    }
    v.extend([
        c("mounts mentioning fcsup", n(b.mounts_fcsup), n(a.mounts_fcsup), true, a.mounts_fcsup <= b.mounts_fcsup),
        c("netns fcsup held, still held", format!("{} seen", r.netns_seen), n(a.netns_still_held.len()), true, a.netns_still_held.is_empty()),
        c("runtime dir /run/fcsup/<root>", b.run_dir.to_string(), a.run_dir.to_string(), true, !a.run_dir),
        c("processes, host-wide", n(b.pids_total), n(a.pids_total), strict, a.pids_total <= b.pids_total),
        c("mountinfo lines, host-wide", n(b.mount_lines), n(a.mount_lines), strict, a.mount_lines <= b.mount_lines),
        c("network namespaces, host-wide", n(b.netns_distinct), n(a.netns_distinct), strict, a.netns_distinct <= b.netns_distinct),
        c("/run/netns entries", n(b.run_netns), n(a.run_netns), strict, a.run_netns <= b.run_netns),
    ]);
    v
}

fn growth_pct(warm: u64, end: u64) -> f64 {
    if warm == 0 {
        return f64::INFINITY;
    }
    (end as f64 - warm as f64) * 100.0 / warm as f64
}

fn prefill_refused(r: &Run) -> bool {
    std::fs::read_to_string(r.dir.join("fcsup.log")).is_ok_and(|l| l.contains("unreadable line"))
}

/// The reasons the run failed (empty: passed).
fn verdict(r: &Run, checks: &[Check]) -> Vec<String> {
    let mut why = Vec::new();
    for c in checks.iter().filter(|c| c.judged && !c.ok) {
        why.push(format!("leak: {} {} → {}", c.name, c.before, c.after));
    }
    match r.exit {
        Some(s) if s.success() => {}
        Some(s) => why.push(format!("fcsup exited with {s}")),
        None => why.push("fcsup did not exit within 60 s of SIGTERM (killed)".into()),
    }
    let l = &r.lifecycles;
    if l.done != l.asked || !l.failures.is_empty() {
        why.push(format!("phase A: {}/{} lifecycles, failures {:?}", l.done, l.asked, l.failures));
    }
    if r.ledger.life_complete as u64 != l.asked || r.ledger.life_instances as u64 != l.asked || l.instance_ids.len() as u64 != l.asked {
        why.push(format!(
            "phase A: ledger has {} instances ({} with initialize+invoke+pre-stop), invocations named {}, for {} lifecycles",
            r.ledger.life_instances,
            r.ledger.life_complete,
            l.instance_ids.len(),
            l.asked
        ));
    }
    let e = &r.echoes;
    if e.lost > 0 || e.misrouted > 0 {
        why.push(format!("phase B: {} lost, {} misrouted", e.lost, e.misrouted));
    }
    if !e.errors.is_empty() && !r.opts.allow_errors {
        why.push(format!("phase B: error answers {:?}", e.errors));
    }
    if r.opts.minutes > 0.0 && e.requests == 0 {
        why.push("phase B: no request was made".into());
    }
    let tol = r.opts.rss_tolerance_pct;
    for (p, (w, end)) in [("A", r.rss_a), ("B", r.rss_b)] {
        if growth_pct(w, end) > tol {
            why.push(format!("RSS grew in phase {p}: {w} → {end} KiB ({:+.1} % > {tol} %)", growth_pct(w, end)));
        }
    }
    let (_, fa, fe) = r.fds_idle;
    if fe > fa + r.opts.fd_slack {
        why.push(format!("fds grew: {fa} idle after phase A → {fe} idle at the end (slack {})", r.opts.fd_slack));
    }
    if r.ledger.unreadable > 0 || prefill_refused(r) {
        why.push("the ledger has unreadable lines (or fcsup refused the soak's prefill)".into());
    }
    why
}

/// Prints the summary; returns the verdict.
pub fn print(r: &Run) -> Vec<String> {
    let cs = checks(r);
    let (l, e) = (&r.lifecycles, &r.echoes);
    println!();
    println!("fcsup soak — admin via {}", r.admin_via);
    println!(
        "phase A  {}/{} lifecycles in {:.1} s ({:.0}/s, {} workers); {} distinct instance ids answered; ledger: {} instances, {} with initialize+invoke+pre-stop; failures: {}",
        l.done,
        l.asked,
        l.secs,
        l.done as f64 / l.secs.max(1e-9),
        r.opts.parallel,
        l.instance_ids.len(),
        r.ledger.life_instances,
        r.ledger.life_complete,
        if l.failures.is_empty() { "none".to_string() } else { format!("{:?}", l.failures) }
    );
    println!(
        "phase B  {} clients × {:.1} s: {} requests ({:.0}/s), {} ok, {} lost, {} misrouted, errors: {}; re-sent on a fresh connection: {}; latency p50 {} µs, p99 {} µs, max {} µs",
        r.opts.clients,
        e.secs,
        e.requests,
        e.requests as f64 / e.secs.max(1e-9),
        e.ok,
        e.lost,
        e.misrouted,
        if e.errors.is_empty() { "none".to_string() } else { format!("{:?}", e.errors) },
        e.resent,
        e.latency_us.0,
        e.latency_us.1,
        e.latency_us.2
    );
    for (f, (n, ok)) in &e.per_function {
        println!("         {f}: {n} requests, {ok} ok");
    }
    println!("         ledger bills {} echo invocations", r.ledger.echo_invocations);
    println!();
    println!("{:<40} {:>12} {:>12}  {:<7} verdict", "count", "before", "after", "judged");
    for c in &cs {
        let v = if c.ok {
            "ok"
        } else if c.judged {
            "LEAK"
        } else {
            "moved (host-wide)"
        };
        println!("{:<40} {:>12} {:>12}  {:<7} {v}", c.name, c.before, c.after, if c.judged { "yes" } else { "no" });
    }
    let tol = r.opts.rss_tolerance_pct;
    for (p, (w, end)) in [("A", r.rss_a), ("B", r.rss_b)] {
        let g = growth_pct(w, end);
        println!(
            "{:<40} {:>9} KiB {:>9} KiB  {:<7} {:+.1} % ({})",
            format!("fcsup RSS, phase {p}: warm → end"),
            w,
            end,
            "yes",
            g,
            if g <= tol { format!("flat, ≤ {tol} %") } else { "GREW".into() }
        );
    }
    let max_rss = r.samples.iter().map(|s| s.rss_kib).max().unwrap_or(0);
    let max_fds = r.samples.iter().map(|s| s.fds).max().unwrap_or(0);
    let (fs, fa, fe) = r.fds_idle;
    println!(
        "{:<40} {:>12} {:>12}  {:<7} {}",
        "fcsup fds idle: after phase A → end",
        fa,
        fe,
        "yes",
        if fe <= fa + r.opts.fd_slack { "ok" } else { "GREW" }
    );
    println!("fcsup fds at start {fs}, max sampled {max_fds}; RSS max sampled {max_rss} KiB over {} samples", r.samples.len());
    let why = verdict(r, &cs);
    println!();
    if why.is_empty() {
        println!("RESULT: PASS");
    } else {
        println!("RESULT: FAIL");
        for w in &why {
            println!("  - {w}");
        }
    }
    why
}

/// The whole run as JSON.
pub fn json(r: &Run, verdict: &[String]) -> Value {
    let (l, e) = (&r.lifecycles, &r.echoes);
    json!({
        "pass": verdict.is_empty(),
        "failures": verdict,
        "options": {
            "lifecycles": r.opts.lifecycles, "minutes": r.opts.minutes, "parallel": r.opts.parallel,
            "clients": r.opts.clients, "rss_tolerance_pct": r.opts.rss_tolerance_pct,
            "fd_slack": r.opts.fd_slack, "strict_host": r.opts.strict_host, "cgroup_root": r.opts.cgroup_root,
        },
        "admin_via": r.admin_via,
        "fcsup_exit": r.exit.map(|s| s.to_string()),
        "phase_a": {
            "asked": l.asked, "done": l.done, "secs": l.secs, "failures": l.failures,
            "distinct_instance_ids": l.instance_ids.len(),
            "ledger_instances": r.ledger.life_instances, "ledger_complete": r.ledger.life_complete,
            "rss_kib_warm": r.rss_a.0, "rss_kib_end": r.rss_a.1,
        },
        "phase_b": {
            "secs": e.secs, "requests": e.requests, "ok": e.ok, "lost": e.lost, "misrouted": e.misrouted,
            "errors": e.errors, "resent": e.resent,
            "per_function": e.per_function.iter().map(|(f, (n, ok))| (f.clone(), json!({"requests": n, "ok": ok}))).collect::<serde_json::Map<_, _>>(),
            "latency_us": {"p50": e.latency_us.0, "p99": e.latency_us.1, "max": e.latency_us.2},
            "ledger_invocations": r.ledger.echo_invocations,
            "rss_kib_warm": r.rss_b.0, "rss_kib_end": r.rss_b.1,
        },
        "fds_idle": {"start": r.fds_idle.0, "after_phase_a": r.fds_idle.1, "end": r.fds_idle.2},
        "checks": checks(r).iter().map(|c| json!({"name": c.name, "before": c.before, "after": c.after, "judged": c.judged, "ok": c.ok})).collect::<Vec<_>>(),
        "leftovers": {
            "pids_in_root": r.after.pids_in_root, "fixture_pids": r.after.fixture_pids,
            "instance_pids_alive": r.instance_pids_alive, "netns_still_held": r.after.netns_still_held,
        },
        "samples": r.samples.iter().map(|s| json!({"t_s": s.t_s, "phase": s.phase, "rss_kib": s.rss_kib, "fds": s.fds})).collect::<Vec<_>>(),
    })
}
