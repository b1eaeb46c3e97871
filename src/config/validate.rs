//! Range checks with FC's limits (README, Configuration) and defaults (Serverless Devs' where FC has none).

use std::path::Path;
use std::time::Duration;

use super::{Function, HealthCheck, Hook, HookConfig, Props};

type Invalid = (String, String);

fn bad<T>(key: &str, message: impl Into<String>) -> Result<T, Invalid> {
    Err((key.to_string(), message.into()))
}

fn hook(key: &str, h: &Option<HookConfig>, max_secs: u64) -> Result<Option<Hook>, Invalid> {
    let Some(h) = h else { return Ok(None) };
    if h.command.is_some() && key != "instanceLifecycleConfig.initializer" {
        return bad(&format!("{key}.command"), "only the Initializer can be a command");
    }
    let handler = h.handler.clone().unwrap_or_default();
    if handler.is_empty() {
        return Ok(None);
    }
    let secs = h.timeout.unwrap_or(3);
    if !(1..=max_secs).contains(&secs) {
        return bad(&format!("{key}.timeout"), format!("{secs} is out of range: a hook timeout is 1 to {max_secs} seconds"));
    }
    Ok(Some(Hook { handler, timeout: Duration::from_secs(secs) }))
}

fn valid_env_key(k: &str) -> bool {
    let mut c = k.chars();
    c.next().is_some_and(|f| f.is_ascii_alphabetic()) && c.all(|ch| ch.is_ascii_alphanumeric() || ch == '_')
}

/// Resolves `props` into a [`Function`]; on error returns (key below props, message).
pub fn validate(p: &Props, default_name: &str, base: &Path) -> Result<Function, Invalid> {
    let name = p.function_name.clone().unwrap_or_else(|| default_name.to_string());
    if name.is_empty()
        || name.len() > 128
        || !name.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
        || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        return bad("functionName", format!("{name:?} is not a valid name: use 1-128 letters, digits, '_' or '-', starting with a letter or '_'"));
    }
    let runtime = p.runtime.clone().unwrap_or_else(|| "custom.debian10".into());
    let language = super::Language::of_runtime(&runtime);
    if language.is_none() && !matches!(runtime.as_str(), "custom" | "custom.debian10" | "custom.debian11" | "custom.debian12" | "custom-container") {
        return bad(
            "runtime",
            format!(
                "{runtime:?} is not supported: fcsup runs custom runtimes (custom, custom.debian10/11/12), custom-container and the built-in \
                 runtimes python3, python3.9, python3.10, python3.12, nodejs8 to nodejs20 and go1"
            ),
        );
    }
    let container = if runtime == "custom-container" {
        let ccc = p.custom_container_config.clone().unwrap_or_default();
        let Some(image) = ccc.image.filter(|i| !i.is_empty()) else {
            return bad("customContainerConfig.image", "required for runtime custom-container");
        };
        // Local sources' relative paths resolve against the file, as `code` does.
        let image = ["oci:", "docker-archive:"]
            .iter()
            .find_map(|t| image.strip_prefix(t).filter(|rest| !rest.starts_with('/')).map(|rest| format!("{t}{}", base.join(rest).display())))
            .unwrap_or(image);
        let per_event = ccc.web_server_mode == Some(false);
        Some(super::Container { image, entrypoint: ccc.entrypoint, command: ccc.command, per_event })
    } else {
        None
    };
    let (code_dir, code_checksum) = if container.is_some() {
        // A container's code is its image.
        (std::path::PathBuf::new(), String::new())
    } else {
        let code = p.code.clone().unwrap_or_else(|| "./code".into());
        let code_dir = base.join(&code);
        let code_dir = match std::fs::canonicalize(&code_dir) {
            Ok(d) if d.is_dir() => d,
            _ => return bad("code", format!("{} is not a directory (relative paths resolve against the file's directory)", code_dir.display())),
        };
        let code_checksum = match super::code_checksum(&code_dir) {
            Ok(c) => c,
            Err(e) => return bad("code", format!("cannot read {}: {e}", code_dir.display())),
        };
        (code_dir, code_checksum)
    };
    let memory_mb = p.memory_size.unwrap_or(512);
    if !(128..=32768).contains(&memory_mb) || memory_mb % 64 != 0 {
        return bad("memorySize", format!("{memory_mb} is invalid: a multiple of 64 from 128 to 32768 (MB)"));
    }
    // Default: as many vCPUs as GB of memory (FC's most generous ratio), in steps of 0.05.
    let cpu = p.cpu.unwrap_or_else(|| ((memory_mb as f64 / 1024.0 / 0.05).floor() * 0.05).clamp(0.05, 16.0));
    let hundredths = (cpu * 100.0).round();
    if !(0.05..=16.0).contains(&cpu) || (hundredths / 5.0).fract() != 0.0 || (cpu * 100.0 - hundredths).abs() > 1e-6 {
        return bad("cpu", format!("{cpu} is invalid: a multiple of 0.05 from 0.05 to 16 (vCPU)"));
    }
    if p.cpu.is_some() {
        let gb = memory_mb as f64 / 1024.0;
        if gb < cpu - 1e-9 || gb > cpu * 4.0 + 1e-9 {
            return bad("cpu", format!("cpu {cpu} with memorySize {memory_mb} breaks FC's ratio: memory (GB) must be 1 to 4 times the vCPUs"));
        }
    }
    let disk_mb = p.disk_size.unwrap_or(512);
    if disk_mb != 512 && disk_mb != 10240 {
        return bad("diskSize", format!("{disk_mb} is invalid: 512 or 10240 (MB)"));
    }
    let timeout = p.timeout.unwrap_or(3);
    if !(1..=86400).contains(&timeout) {
        return bad("timeout", format!("{timeout} is out of range: 1 to 86400 seconds"));
    }
    let concurrency = p.instance_concurrency.unwrap_or(1);
    if !(1..=200).contains(&concurrency) {
        return bad("instanceConcurrency", format!("{concurrency} is out of range: 1 to 200"));
    }
    let mut env_size = 0;
    for (k, v) in &p.environment_variables {
        if !valid_env_key(k) {
            return bad(&format!("environmentVariables.{k}"), "a name starts with a letter and has only letters, digits and '_'");
        }
        if k.starts_with("FC_") {
            return bad(&format!("environmentVariables.{k}"), "the FC_ prefix is reserved for Function Compute's own variables");
        }
        env_size += k.len() + v.len();
    }
    if env_size > 4096 {
        return bad("environmentVariables", format!("{env_size} bytes in total; FC allows 4 KB"));
    }
    let crc = p.custom_runtime_config.clone().unwrap_or_default();
    let ccc = p.custom_container_config.clone().unwrap_or_default();
    let (section, port, health_check_config) = match &container {
        Some(_) => ("customContainerConfig", ccc.port, ccc.health_check_config.clone()),
        None => ("customRuntimeConfig", crc.port, crc.health_check_config.clone()),
    };
    let mut command: Vec<String> = Vec::new();
    if container.is_none() {
        command = crc.command.clone();
        if command.is_empty() {
            command.push("/code/bootstrap".into());
        }
        command.extend(crc.args.iter().cloned());
    }
    let port = port.unwrap_or(9000);
    if port == 0 {
        return bad(&format!("{section}.port"), "0 is not a port: use 1 to 65535 (default 9000)");
    }
    let mut health_check = None;
    if let Some(hc) = &health_check_config {
        let k = format!("{section}.healthCheckConfig");
        let Some(path) = hc.http_get_url.clone().filter(|u| u.starts_with('/') && u.len() <= 2048) else {
            return bad(&format!("{k}.httpGetUrl"), "required: a path starting with '/' (at most 2048 characters)");
        };
        let ranges = [
            ("initialDelaySeconds", hc.initial_delay_seconds, 0, 120),
            ("periodSeconds", hc.period_seconds, 1, 120),
            ("timeoutSeconds", hc.timeout_seconds, 1, 3),
            ("failureThreshold", hc.failure_threshold.map(u64::from), 1, 120),
            ("successThreshold", hc.success_threshold.map(u64::from), 1, 120),
        ];
        for (field, v, lo, hi) in ranges {
            if let Some(v) = v.filter(|v| !(lo..=hi).contains(v)) {
                return bad(&format!("{k}.{field}"), format!("{v} is out of range: {lo} to {hi}"));
            }
        }
        health_check = Some(HealthCheck {
            path,
            initial_delay: Duration::from_secs(hc.initial_delay_seconds.unwrap_or(0)),
            period: Duration::from_secs(hc.period_seconds.unwrap_or(3)),
            timeout: Duration::from_secs(hc.timeout_seconds.unwrap_or(1)),
            failure_threshold: hc.failure_threshold.unwrap_or(3),
            success_threshold: hc.success_threshold.unwrap_or(1),
        });
    }
    let aic = p.async_invoke_config.clone().unwrap_or_default();
    let async_retries = aic.max_async_retry_attempts.unwrap_or(3);
    if async_retries > 8 {
        return bad("asyncInvokeConfig.maxAsyncRetryAttempts", format!("{async_retries} is out of range: 0 to 8"));
    }
    let async_age = aic.max_async_event_age_in_seconds.unwrap_or(86400);
    if !(1..=86400).contains(&async_age) {
        return bad("asyncInvokeConfig.maxAsyncEventAgeInSeconds", format!("{async_age} is out of range: 1 to 86400"));
    }
    let dc = aic.destination_config.clone().unwrap_or_default();
    let async_on_success = destination("asyncInvokeConfig.destinationConfig.onSuccess.destination", &dc.on_success)?;
    let async_on_failure = destination("asyncInvokeConfig.destinationConfig.onFailure.destination", &dc.on_failure)?;
    let lc = p.instance_lifecycle_config.clone().unwrap_or_default();
    let initializer = hook("instanceLifecycleConfig.initializer", &lc.initializer, 300)?;
    let pre_stop = hook("instanceLifecycleConfig.preStop", &lc.pre_stop, 90)?;
    let pre_freeze = hook("instanceLifecycleConfig.preFreeze", &lc.pre_freeze, 90)?;
    let ext = p.fcsup.clone().unwrap_or_default();
    let gpu = gpu(p, &ext, container.is_some())?;
    let builtin = builtin(p, &ext, language, concurrency, pre_freeze.is_some())?;
    let layers = layers(p, &ext, base, container.is_some())?;
    let init_command = match lc.initializer.as_ref().and_then(|h| h.command.clone()) {
        None => None,
        Some(_) if initializer.is_some() => {
            return bad("instanceLifecycleConfig.initializer", "handler and command are exclusive: give one (FC's two kinds of Initializer)");
        }
        Some(_) if gpu.is_none() => {
            return bad(
                "instanceLifecycleConfig.initializer.command",
                "FC runs an execute-instruction Initializer for GPU functions only (gpuConfig)",
            );
        }
        Some(argv) if argv.is_empty() || argv[0].is_empty() => {
            return bad("instanceLifecycleConfig.initializer.command", "an empty command: give the program and its arguments");
        }
        Some(argv) => {
            let secs = lc.initializer.as_ref().and_then(|h| h.timeout).unwrap_or(3);
            if !(1..=300).contains(&secs) {
                return bad("instanceLifecycleConfig.initializer.timeout", format!("{secs} is out of range: a hook timeout is 1 to 300 seconds"));
            }
            Some(super::InitCommand { argv, timeout: Duration::from_secs(secs) })
        }
    };
    for d in &ext.devices {
        if !valid_cdi_name(d) {
            return bad("fcsup.devices", format!("{d:?} is not a CDI device name: vendor.com/class=name (e.g. nvidia.com/gpu=0)"));
        }
    }
    let gpu_hibernate_after = match ext.gpu_hibernate_after {
        None => None,
        Some(_) if gpu.is_none() => return bad("fcsup.gpuHibernateAfter", "only GPU functions (gpuConfig) hibernate their GPU"),
        Some(0) => return bad("fcsup.gpuHibernateAfter", "0 is too short: at least 1 second"),
        Some(s) => Some(Duration::from_secs(s)),
    };
    let idle = ext.idle_timeout.unwrap_or(180);
    if idle < 1 {
        return bad("fcsup.idleTimeout", "0 is too short: at least 1 second (default 180)");
    }
    if let (Some(min), Some(max)) = (ext.min_instances, ext.max_instances) {
        if min > max {
            return bad("fcsup.minInstances", format!("{min} is above fcsup.maxInstances ({max})"));
        }
    }
    if ext.max_instances == Some(0) {
        return bad("fcsup.maxInstances", "0 would refuse every request: at least 1");
    }
    if container.as_ref().is_some_and(|c| c.per_event) {
        // FC (seed 003, Limits): without a web server there is nothing to call hooks or
        // health checks on, and an instance lives for one event.
        let k = "customContainerConfig.webServerMode";
        let refused = [
            ("instanceLifecycleConfig.initializer", initializer.is_some()),
            ("instanceLifecycleConfig.preFreeze", pre_freeze.is_some()),
            ("instanceLifecycleConfig.preStop", pre_stop.is_some()),
            ("customContainerConfig.healthCheckConfig", health_check.is_some()),
            ("instanceConcurrency", concurrency > 1),
            ("fcsup.minInstances", ext.min_instances.unwrap_or(0) > 0),
        ];
        if let Some((field, _)) = refused.iter().find(|(_, set)| *set) {
            return bad(field, format!("not available with {k}: false (each event runs the container once, without an HTTP server to call)"));
        }
    }
    Ok(Function {
        name,
        runtime,
        region: p.region.clone().unwrap_or_else(|| "cn-hangzhou".into()),
        code_dir,
        container,
        code_checksum,
        handler: p.handler.clone().unwrap_or_else(|| default_handler(language).into()),
        command,
        port,
        memory_mb,
        cpu,
        disk_mb,
        timeout: Duration::from_secs(timeout),
        concurrency: concurrency as usize,
        env: p.environment_variables.clone(),
        initializer,
        pre_stop,
        pre_freeze,
        health_check,
        async_retries,
        async_max_age: Duration::from_secs(async_age),
        async_on_success,
        async_on_failure,
        min_instances: ext.min_instances.unwrap_or(0),
        max_instances: ext.max_instances,
        idle_timeout: Duration::from_secs(idle),
        start_timeout: Duration::from_secs(ext.start_timeout.unwrap_or(120)),
        stop_grace: Duration::from_secs(ext.stop_grace.unwrap_or(3)),
        pids_max: ext.pids_max.unwrap_or(1024),
        init_command,
        gpu,
        devices: ext.devices.clone(),
        gpu_hibernate_after,
        builtin,
        layers,
        freeze_hazards: ext.freeze_hazards.unwrap_or_default(),
    })
}

/// A built-in runtime's settings, refused where FC 3.0 refuses them ("Feature updates in
/// Function Compute 3.0": built-in runtimes take one request at a time and have no PreFreeze).
/// An Async destination: only FC 3.0 functions (`acs:fc:<region>:<account>:functions/<name>`)
/// can be served here; MNS, EventBridge and RocketMQ are cloud services fcsup has no stand-in for.
fn destination(key: &str, d: &Option<super::DestinationRef>) -> Result<Option<super::Destination>, Invalid> {
    let Some(arn) = d.as_ref().and_then(|d| d.destination.as_deref()).filter(|a| !a.is_empty()) else { return Ok(None) };
    let parts: Vec<&str> = arn.splitn(5, ':').collect();
    let service = parts.get(1).copied().unwrap_or("");
    if parts.first() != Some(&"acs") || parts.len() < 5 {
        return bad(key, format!("{arn:?} is not an ARN: expected acs:fc:<region>:<account>:functions/<name>"));
    }
    if service != "fc" {
        return bad(
            key,
            format!("{arn:?}: {service} destinations are not supported here; only another function (acs:fc:<region>:<account>:functions/<name>)"),
        );
    }
    let Some(function) = parts[4].strip_prefix("functions/").filter(|n| !n.is_empty() && !n.contains('/')) else {
        return bad(key, format!("{arn:?} is not a function: expected acs:fc:<region>:<account>:functions/<name> (FC 3.0)"));
    };
    Ok(Some(super::Destination { function: function.to_string(), region: parts[2].to_string(), account: parts[3].to_string() }))
}

/// Every Async destination names a function of the same file.
pub fn destinations_exist(functions: &[Function]) -> Result<(), Invalid> {
    for f in functions {
        for (which, d) in [("onSuccess", &f.async_on_success), ("onFailure", &f.async_on_failure)] {
            if let Some(d) = d.as_ref().filter(|d| !functions.iter().any(|g| g.name == d.function)) {
                let key = format!("function {}: asyncInvokeConfig.destinationConfig.{which}.destination", f.name);
                return bad(&key, format!("function {:?} does not exist in this file", d.function));
            }
        }
    }
    Ok(())
}

fn builtin(
    p: &Props,
    ext: &super::FunctionExt,
    language: Option<super::Language>,
    concurrency: u32,
    pre_freeze: bool,
) -> Result<Option<super::Builtin>, Invalid> {
    let Some(language) = language else {
        if ext.interpreter.is_some() {
            return bad("fcsup.interpreter", "only built-in runtimes (python3.x, nodejsNN) have an interpreter");
        }
        return Ok(None);
    };
    let runtime = p.runtime.as_deref().unwrap_or_default();
    if concurrency > 1 {
        return bad("instanceConcurrency", format!("{concurrency}: FC 3.0's built-in runtime {runtime} takes one request at a time (1)"));
    }
    if pre_freeze {
        return bad("instanceLifecycleConfig.preFreeze", format!("FC 3.0's built-in runtimes ({runtime}) have no PreFreeze hook"));
    }
    if p.custom_runtime_config.is_some() {
        return bad("customRuntimeConfig", format!("only for custom runtimes: {runtime} runs its handler, not a command"));
    }
    if p.custom_container_config.is_some() {
        return bad("customContainerConfig", "only for runtime custom-container");
    }
    let handler = p.handler.as_deref().unwrap_or(default_handler(Some(language)));
    let interpreter = match language {
        super::Language::Go => {
            if ext.interpreter.is_some() {
                return bad("fcsup.interpreter", "go1 runs the compiled program named by handler: it has no interpreter");
            }
            if handler.is_empty() || handler.contains('/') || handler == "." || handler == ".." {
                return bad("handler", format!("{handler:?}: for go1 the handler is the name of the executable in the code directory (e.g. main)"));
            }
            None
        }
        super::Language::Python | super::Language::Node => {
            if !handler.split_once('.').is_some_and(|(file, func)| !file.is_empty() && !func.is_empty() && !func.contains('/')) {
                return bad("handler", format!("{handler:?}: a built-in runtime's handler is FILE.FUNCTION, e.g. index.handler"));
            }
            let default = if language == super::Language::Python { "python3" } else { "node" };
            match ext.interpreter.as_deref() {
                Some("") => return bad("fcsup.interpreter", "empty: a path, or a program name looked up in /usr/local/bin, /usr/bin and /bin"),
                Some(i) => Some(i.to_string()),
                None => Some(default.to_string()),
            }
        }
    };
    Ok(Some(super::Builtin { language, interpreter }))
}

/// A handler's default: `main` for go1 (Serverless Devs' Go templates), else `index.handler`.
fn default_handler(language: Option<super::Language>) -> &'static str {
    if language == Some(super::Language::Go) {
        "main"
    } else {
        "index.handler"
    }
}

/// `layers:` resolved to directories: ARN `acs:fc:REGION:ACCOUNT:layers/NAME/versions/N` is
/// `<layerDir>/NAME/N` (README, Built-in runtimes).
fn layers(p: &Props, ext: &super::FunctionExt, base: &Path, is_container: bool) -> Result<Vec<std::path::PathBuf>, Invalid> {
    if p.layers.is_empty() {
        return Ok(Vec::new());
    }
    if is_container {
        return bad("layers", "FC has no layers for custom-container functions: put them in the image");
    }
    let dir = base.join(ext.layer_dir.as_deref().unwrap_or("layers"));
    let mut out = Vec::new();
    for (i, arn) in p.layers.iter().enumerate() {
        let key = format!("layers[{i}]");
        let Some((name, version)) = parse_layer_arn(arn) else {
            return bad(&key, format!("{arn:?} is not a layer ARN: acs:fc:REGION:ACCOUNT:layers/NAME/versions/VERSION"));
        };
        let path = dir.join(name).join(version);
        match std::fs::canonicalize(&path) {
            Ok(d) if d.is_dir() => out.push(d),
            _ => {
                return bad(
                    &key,
                    format!(
                        "layer {arn} is unknown: put its unpacked contents (python/, nodejs/node_modules/, bin/, lib/ …) in {} \
                         (fcsup.layerDir, default ./layers next to the file, laid out NAME/VERSION)",
                        path.display()
                    ),
                )
            }
        }
        if out[..out.len() - 1].contains(out.last().expect("pushed")) {
            return bad(&key, format!("layer {arn} is listed twice"));
        }
    }
    Ok(out)
}

/// (name, version) of a layer ARN.
fn parse_layer_arn(arn: &str) -> Option<(&str, &str)> {
    let rest = arn.strip_prefix("acs:fc:")?;
    let (_region_account, path) = rest.split_once(":layers/")?;
    let (name, version) = path.split_once("/versions/")?;
    let word = |s: &str| !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    (word(name) && !version.is_empty() && version.chars().all(|c| c.is_ascii_digit())).then_some((name, version))
}

/// `gpuConfig` (with `fcsup.gpus`), validated as FC does.
fn gpu(p: &Props, ext: &super::FunctionExt, is_container: bool) -> Result<Option<super::Gpu>, Invalid> {
    let Some(g) = &p.gpu_config else {
        if ext.gpus.is_some() {
            return bad("fcsup.gpus", "only GPU functions (gpuConfig) get GPUs");
        }
        return Ok(None);
    };
    if !is_container {
        return bad("gpuConfig", "FC runs GPU functions from container images only: use runtime custom-container");
    }
    let name = g.gpu_type.clone().unwrap_or_default();
    let Some(kind) = super::GpuType::from_fc(&name) else {
        return bad("gpuConfig.gpuType", format!("{name:?} is not a GPU type: fc.gpu.tesla.1, fc.gpu.ampere.1 or fc.gpu.ada.1"));
    };
    let Some(memory_mb) = g.gpu_memory_size else { return bad("gpuConfig.gpuMemorySize", "required: MB of GPU memory, a multiple of 1024") };
    if memory_mb == 0 || memory_mb % 1024 != 0 || memory_mb > kind.card_memory_mb() {
        return bad("gpuConfig.gpuMemorySize", format!("{memory_mb} is invalid: a multiple of 1024 up to {} (MB) for {name}", kind.card_memory_mb()));
    }
    let devices = match &ext.gpus {
        None => Vec::new(),
        Some(super::GpuSelection::Keyword(k)) if k == "all" => Vec::new(),
        Some(super::GpuSelection::Keyword(k)) => return bad("fcsup.gpus", format!("{k:?}: use all, or a list of GPU indices or UUIDs")),
        Some(super::GpuSelection::List(ids)) if ids.is_empty() => return bad("fcsup.gpus", "an empty list grants no GPU: use all, or name some"),
        Some(super::GpuSelection::List(ids)) => {
            let ids: Vec<String> = ids.iter().map(ToString::to_string).collect();
            if let Some(bad_id) = ids.iter().find(|i| i.is_empty() || !i.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == ':')) {
                return bad("fcsup.gpus", format!("{bad_id:?} is not a GPU index or UUID"));
            }
            ids
        }
    };
    Ok(Some(super::Gpu { kind, memory_mb, devices }))
}

/// CDI's `vendor.com/class=name` (CDI spec: vendor a domain-like name, class and device
/// alphanumerics with `_`, `-`, `.`, and `:` in the device name).
fn valid_cdi_name(name: &str) -> bool {
    let Some((kind, device)) = name.split_once('=') else { return false };
    let Some((vendor, class)) = kind.split_once('/') else { return false };
    let word = |s: &str, extra: &[char]| {
        !s.is_empty() && s.starts_with(|c: char| c.is_ascii_alphanumeric()) && s.chars().all(|c| c.is_ascii_alphanumeric() || extra.contains(&c))
    };
    word(vendor, &['_', '-', '.']) && word(class, &['_', '-']) && word(device, &['_', '-', '.', ':'])
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::super::{Config, ConfigError};

    fn parse(yaml: &str) -> Result<Config, ConfigError> {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("code")).unwrap();
        Config::parse(yaml, &PathBuf::from("s.yaml"), dir.path())
    }

    #[test]
    fn async_destinations_are_functions_of_the_same_file() {
        let file = |dest: &str| {
            format!(
                "resources:\n  a:\n    props:\n      code: code\n      asyncInvokeConfig:\n        destinationConfig:\n          onFailure: {{destination: \"{dest}\"}}\n  b:\n    props:\n      code: code\n"
            )
        };
        let cfg = parse(&file("acs:fc:cn-hangzhou:123:functions/b")).unwrap();
        let d = cfg.function("a").unwrap().async_on_failure.clone().unwrap();
        assert_eq!((d.function.as_str(), d.region.as_str(), d.account.as_str()), ("b", "cn-hangzhou", "123"));
        assert_eq!(cfg.function("a").unwrap().async_on_success, None);
        let err = parse(&file("acs:fc:cn-hangzhou:123:functions/nope")).unwrap_err().to_string();
        assert!(err.contains("onFailure.destination") && err.contains("\"nope\" does not exist"), "{err}");
        let err = parse(&file("acs:mns:cn-hangzhou:123:/queues/q/messages")).unwrap_err().to_string();
        assert!(err.contains("mns destinations are not supported"), "{err}");
        let err = parse(&file("acs:fc:cn-hangzhou:123:services/s/functions/b")).unwrap_err().to_string();
        assert!(err.contains("FC 3.0"), "{err}");
        let err = parse(&file("functions/b")).unwrap_err().to_string();
        assert!(err.contains("is not an ARN"), "{err}");
    }

    #[test]
    fn custom_containers_need_an_image_and_take_fcs_overrides() {
        let c = |ccc: &str| format!("resources:\n  app:\n    props:\n      runtime: custom-container\n      customContainerConfig:\n{ccc}");
        let err = parse(&c("        port: 8080\n")).unwrap_err().to_string();
        assert!(err.contains("customContainerConfig.image: required"), "{err}");
        let err = parse(&c("        image: oci:/x\n        port: 0\n")).unwrap_err().to_string();
        assert!(err.contains("customContainerConfig.port"), "{err}");
        let cfg = parse(&c("        image: oci:rel/dir:v1\n        port: 8080\n        entrypoint: [/bin/app]\n")).unwrap();
        let f = &cfg.functions[0];
        assert_eq!(f.port, 8080);
        assert!(f.code_dir.as_os_str().is_empty(), "no code directory needed");
        let container = f.container.as_ref().unwrap();
        assert_eq!(container.image, format!("oci:{}", cfg.base.join("rel/dir:v1").display()), "relative to the file");
        let image =
            |e: &[&str], c: &[&str]| (e.iter().map(|s| s.to_string()).collect::<Vec<_>>(), c.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        let (ie, ic) = image(&["/img/entry"], &["img-cmd"]);
        // An entrypoint alone drops the image's Cmd (docker run --entrypoint).
        assert_eq!(container.argv(&ie, &ic), ["/bin/app"]);
        let none = super::super::Container { image: String::new(), entrypoint: None, command: None, per_event: false };
        assert_eq!(none.argv(&ie, &ic), ["/img/entry", "img-cmd"]);
        let cmd = super::super::Container { command: Some(vec!["fc-cmd".into()]), ..none };
        assert_eq!(cmd.argv(&ie, &ic), ["/img/entry", "fc-cmd"]);
    }

    #[test]
    fn gpu_functions_are_validated_as_fc_does() {
        let c = |props: &str| {
            format!("resources:\n  g:\n    props:\n      runtime: custom-container\n      customContainerConfig:\n        image: oci:/x\n{props}")
        };
        let f =
            parse(&c("      gpuConfig: {gpuType: fc.gpu.ada.1, gpuMemorySize: 8192}\n      fcsup: {gpus: [0, GPU-abc], gpuHibernateAfter: 30}\n"))
                .unwrap()
                .functions
                .remove(0);
        let g = f.gpu.unwrap();
        assert_eq!((g.kind, g.memory_mb, g.devices), (super::super::GpuType::Ada, 8192, vec!["0".to_string(), "GPU-abc".to_string()]));
        assert_eq!(f.gpu_hibernate_after, Some(std::time::Duration::from_secs(30)));
        for (props, want) in [
            ("      gpuConfig: {gpuType: fc.gpu.nope.1, gpuMemorySize: 8192}\n", "gpuConfig.gpuType"),
            ("      gpuConfig: {gpuType: fc.gpu.tesla.1, gpuMemorySize: 1000}\n", "a multiple of 1024 up to 16384"),
            ("      gpuConfig: {gpuType: fc.gpu.tesla.1, gpuMemorySize: 32768}\n", "a multiple of 1024 up to 16384"),
            ("      fcsup: {gpuHibernateAfter: 5}\n", "only GPU functions"),
            ("      instanceLifecycleConfig: {initializer: {command: [/bin/true]}}\n", "GPU functions only"),
            (
                "      gpuConfig: {gpuType: fc.gpu.tesla.1, gpuMemorySize: 2048}\n      instanceLifecycleConfig: {initializer: {handler: x, command: [/bin/true]}}\n",
                "exclusive",
            ),
            ("      fcsup: {devices: [nvidia.com/gpu]}\n", "not a CDI device name"),
        ] {
            let err = parse(&c(props)).unwrap_err().to_string();
            assert!(err.contains(want), "{props}: {err}");
        }
        let f = parse(&c("      gpuConfig: {gpuType: fc.gpu.tesla.1, gpuMemorySize: 2048}\n      instanceLifecycleConfig: {initializer: {command: [python3, warm.py], timeout: 60}}\n      fcsup: {devices: [example.com/fakegpu=0]}\n"))
            .unwrap()
            .functions
            .remove(0);
        assert_eq!(f.init_command.unwrap().argv, ["python3", "warm.py"]);
        assert!(f.initializer.is_none());
        assert_eq!(f.devices, ["example.com/fakegpu=0"]);
        let err = parse("resources:\n  g:\n    props:\n      gpuConfig: {gpuType: fc.gpu.tesla.1, gpuMemorySize: 2048}\n").unwrap_err().to_string();
        assert!(err.contains("custom-container"), "{err}");
    }

    #[test]
    fn containers_without_a_web_server_refuse_what_needs_one() {
        let c = |extra: &str| {
            format!(
                "resources:\n  job:\n    props:\n      runtime: custom-container\n      customContainerConfig:\n        image: oci:/x\n        webServerMode: false\n{extra}"
            )
        };
        let f = parse(&c("")).unwrap().functions.remove(0);
        assert!(f.container.unwrap().per_event);
        for (extra, field) in [
            ("      instanceConcurrency: 2\n", "instanceConcurrency"),
            ("      instanceLifecycleConfig:\n        preStop: {handler: x, timeout: 3}\n", "instanceLifecycleConfig.preStop"),
            ("      fcsup: {minInstances: 1}\n", "fcsup.minInstances"),
        ] {
            let err = parse(&c(extra)).unwrap_err().to_string();
            assert!(err.contains(field) && err.contains("webServerMode: false"), "{err}");
        }
    }

    const GOOD: &str = "
edition: 3.0.0
resources:
  hello:
    component: fc3
    props:
      region: cn-hangzhou
      runtime: custom.debian10
      code: ./code
      memorySize: 256
      timeout: 5
      instanceConcurrency: 4
      environmentVariables: {GREETING: hi}
      customRuntimeConfig:
        command: [python3]
        args: [server.py]
        port: 9000
      instanceLifecycleConfig:
        initializer: {handler: index.init, timeout: 10}
        preStop: {handler: '', timeout: 3}
      role: acs:ram::123:role/ignored
";

    #[test]
    fn serverless_devs_file() {
        let c = parse(GOOD).unwrap();
        let f = &c.functions[0];
        assert_eq!(f.name, "hello");
        assert_eq!(f.command, ["python3", "server.py"]);
        assert_eq!(f.concurrency, 4);
        assert_eq!(f.initializer.as_ref().unwrap().timeout.as_secs(), 10);
        assert!(f.pre_stop.is_none(), "an empty handler disables the hook");
        assert!((f.cpu - 0.25).abs() < 1e-9, "default cpu is memory in GB: {}", f.cpu);
    }

    #[test]
    fn wrong_type_names_file_and_position() {
        let e = parse(&GOOD.replace("memorySize: 256", "memorySize: lots")).unwrap_err().to_string();
        assert!(e.starts_with("s.yaml:"), "{e}");
        assert!(e.contains("line") || e.contains(':'), "{e}");
    }

    #[test]
    fn out_of_range_names_key() {
        let e = parse(&GOOD.replace("memorySize: 256", "memorySize: 100")).unwrap_err().to_string();
        assert!(e.contains("resources.hello.props.memorySize") && e.contains("multiple of 64"), "{e}");
        let e = parse(&GOOD.replace("instanceConcurrency: 4", "instanceConcurrency: 500")).unwrap_err().to_string();
        assert!(e.contains("instanceConcurrency") && e.contains("1 to 200"), "{e}");
        let e = parse(&GOOD.replace("code: ./code", "code: ./nowhere")).unwrap_err().to_string();
        assert!(e.contains("props.code") && e.contains("not a directory"), "{e}");
    }

    #[test]
    fn reserved_env_prefix() {
        let e = parse(&GOOD.replace("GREETING: hi", "FC_X: hi")).unwrap_err().to_string();
        assert!(e.contains("environmentVariables.FC_X"), "{e}");
    }

    #[test]
    fn code_checksum_follows_the_code() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("code/lib")).unwrap();
        std::fs::write(dir.path().join("code/a.py"), "print(1)").unwrap();
        std::fs::write(dir.path().join("code/lib/b.py"), "x = 2").unwrap();
        let load = || Config::parse(GOOD, &PathBuf::from("s.yaml"), dir.path()).unwrap().functions.remove(0);
        let first = load();
        assert!(first.code_checksum.parse::<u64>().is_ok(), "{}", first.code_checksum);
        assert_eq!(load(), first, "same code, same function");
        std::fs::write(dir.path().join("code/lib/b.py"), "x = 3").unwrap();
        let changed = load();
        assert_ne!(changed.code_checksum, first.code_checksum);
        assert_ne!(changed, first, "a reload sees changed code");
    }

    #[test]
    fn gpu_functions_need_a_container_image() {
        let e = parse(&GOOD.replace("      role:", "      gpuConfig: {gpuMemorySize: 16384, gpuType: fc.gpu.tesla.1}\n      role:"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("resources.hello.props.gpuConfig") && e.contains("custom-container"), "{e}");
    }

    #[test]
    fn unknown_fcsup_key_is_an_error() {
        let e = parse(&GOOD.replace("      role:", "      fcsup: {idleTimeot: 3}\n      role:")).unwrap_err().to_string();
        assert!(e.contains("idleTimeot"), "{e}");
    }

    #[test]
    fn built_in_runtimes_follow_fc_3() {
        let f = |props: &str| format!("resources:\n  app:\n    props:\n{props}");
        let cfg = parse(&f("      runtime: python3.10\n      handler: index.handler\n")).unwrap();
        let b = cfg.functions[0].builtin.clone().unwrap();
        assert_eq!((b.language, b.interpreter.as_deref()), (super::super::Language::Python, Some("python3")));
        let cfg = parse(&f("      runtime: nodejs18\n      fcsup:\n        interpreter: /usr/local/bin/node18\n")).unwrap();
        let b = cfg.functions[0].builtin.clone().unwrap();
        assert_eq!((b.language, b.interpreter.as_deref()), (super::super::Language::Node, Some("/usr/local/bin/node18")));
        let cfg = parse(&f("      runtime: go1\n")).unwrap();
        assert_eq!((cfg.functions[0].handler.as_str(), cfg.functions[0].builtin.clone().unwrap().interpreter), ("main", None));
        assert!(parse(&f("      runtime: custom\n")).unwrap().functions[0].builtin.is_none());
        for (props, want) in [
            ("      runtime: java11\n", "runtime: \"java11\" is not supported"),
            ("      runtime: python3.10\n      instanceConcurrency: 2\n", "instanceConcurrency: 2: FC 3.0's built-in runtime"),
            (
                "      runtime: python3\n      instanceLifecycleConfig:\n        preFreeze:\n          handler: index.pre_freeze\n",
                "preFreeze: FC 3.0's built-in runtimes (python3) have no PreFreeze",
            ),
            ("      runtime: python3\n      handler: index\n", "handler: \"index\": a built-in runtime's handler is FILE.FUNCTION"),
            ("      runtime: go1\n      handler: bin/main\n", "for go1 the handler is the name of the executable"),
            ("      runtime: go1\n      fcsup:\n        interpreter: go\n", "go1 runs the compiled program"),
            ("      runtime: custom\n      fcsup:\n        interpreter: python3\n", "only built-in runtimes"),
            ("      runtime: nodejs20\n      customRuntimeConfig:\n        port: 9000\n", "customRuntimeConfig: only for custom runtimes"),
        ] {
            let err = parse(&f(props)).unwrap_err().to_string();
            assert!(err.contains(want), "{props}: {err}");
        }
    }

    #[test]
    fn layers_resolve_in_the_layer_directory_or_fail() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("code")).unwrap();
        std::fs::create_dir_all(dir.path().join("layers/numpy/3/python")).unwrap();
        std::fs::create_dir_all(dir.path().join("mine/tools/12")).unwrap();
        let p = |props: &str| {
            Config::parse(&format!("resources:\n  app:\n    props:\n      runtime: python3.10\n{props}"), &PathBuf::from("s.yaml"), dir.path())
        };
        let cfg = p("      layers: [\"acs:fc:cn-hangzhou:123:layers/numpy/versions/3\"]\n").unwrap();
        assert_eq!(cfg.functions[0].layers, vec![dir.path().join("layers/numpy/3").canonicalize().unwrap()]);
        let cfg = p("      layers:\n        - acs:fc:cn-hangzhou:123:layers/tools/versions/12\n        - acs:fc:cn-hangzhou:123:layers/numpy/versions/3\n      fcsup:\n        layerDir: mine\n");
        let err = cfg.unwrap_err().to_string();
        assert!(err.contains("layers[1]: layer acs:fc:cn-hangzhou:123:layers/numpy/versions/3 is unknown"), "{err}");
        assert!(err.contains(&dir.path().join("mine/numpy/3").display().to_string()), "names where it looked: {err}");
        let err = p("      layers: [\"numpy\"]\n").unwrap_err().to_string();
        assert!(err.contains("layers[0]: \"numpy\" is not a layer ARN"), "{err}");
        let err = p("      layers: [acs:fc:r:1:layers/numpy/versions/3, acs:fc:r:2:layers/numpy/versions/3]\n").unwrap_err().to_string();
        assert!(err.contains("listed twice"), "{err}");
        // Custom runtimes take layers too; custom containers do not.
        let cfg = Config::parse(
            "resources:\n  app:\n    props:\n      runtime: custom\n      layers: [acs:fc:r:1:layers/numpy/versions/3]\n",
            &PathBuf::from("s.yaml"),
            dir.path(),
        )
        .unwrap();
        assert_eq!(cfg.functions[0].layers.len(), 1);
    }
}
