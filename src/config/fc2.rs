//! Which component a Serverless Devs resource is for, and FC 2.0's `fc` component props
//! (`region`, `service`, `function`, `triggers`) mapped onto FC 3.0's flat props.
//!
//! FC 2.0's names, from the `devsapp/fc` component's yaml.md and FC 3.0's "Feature updates"
//! page: `function.name` → `functionName`, `codeUri` → `code`, `caPort` → the runtime's or the
//! container's `port`, `customContainerConfig.command`/`args` (JSON strings) → FC 3.0's
//! `entrypoint`/`command`, `initializer` + `initializationTimeout` →
//! `instanceLifecycleConfig.initializer`, `asyncConfiguration` → `asyncInvokeConfig`, and
//! `instanceType: fc.gpu.*` + `gpuMemorySize` → `gpuConfig`. Triggers need no mapping: every
//! function answers HTTP at `/http/<name>/`.

use serde_json::{json, Map, Value};

/// The function keys FC 2.0 names differently from FC 3.0 and [`to_fc3`] reads.
pub const FC2_NAMES: [&str; 9] = [
    "name",
    "codeUri",
    "caPort",
    "customContainerConfig",
    "initializer",
    "initializationTimeout",
    "asyncConfiguration",
    "instanceType",
    "gpuMemorySize",
];

/// What a resource is, from its `component`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Component {
    /// `fc3` (or no `component`, as plain `props` files have): FC 3.0 props.
    Fc3,
    /// `fc` (Serverless Devs 1.x/2.x's FC 2.0 component): `service` + `function` + `triggers`.
    Fc2,
    /// Any other component (`fc3-domain`, `fc-domain`, `oss`, …): not a function.
    Other(String),
}

/// Classifies a resource by its `component` (`devsapp/fc3`, `fc3@0.1.2` …) and, when it has
/// none, by the shape of its props.
pub fn component(resource: &Value) -> Component {
    let props = resource.get("props");
    let Some(name) = resource.get("component").and_then(Value::as_str) else {
        return if props.and_then(|p| p.get("function")).is_some_and(Value::is_object) { Component::Fc2 } else { Component::Fc3 };
    };
    let short = name.rsplit('/').next().unwrap_or(name);
    let short = short.split('@').next().unwrap_or(short);
    match short {
        "fc3" => Component::Fc3,
        "fc" | "fc-deploy" => Component::Fc2,
        _ => Component::Other(name.to_string()),
    }
}

/// FC 2.0's `props` as FC 3.0's; `Err((key below props, message))` when it has no function.
pub fn to_fc3(props: &Value) -> Result<Value, (String, String)> {
    let Some(f) = props.get("function").and_then(Value::as_object) else {
        return Err(("function".into(), "an FC 2.0 file (component fc) needs props.function: {name, runtime, codeUri, …}".into()));
    };
    let mut out = Map::new();
    // Same name, same meaning in both versions.
    const SAME: [&str; 12] = [
        "runtime",
        "handler",
        "memorySize",
        "timeout",
        "instanceConcurrency",
        "cpu",
        "diskSize",
        "environmentVariables",
        "layers",
        "customRuntimeConfig",
        "instanceLifecycleConfig",
        "fcsup",
    ];
    for k in SAME {
        if let Some(v) = f.get(k) {
            out.insert(k.into(), v.clone());
        }
    }
    if let Some(v) = props.get("region") {
        out.insert("region".into(), v.clone());
    }
    if let Some(v) = f.get("name") {
        out.insert("functionName".into(), v.clone());
    }
    if let Some(v) = f.get("codeUri") {
        out.insert("code".into(), v.clone());
    }
    if let Some(ccc) = f.get("customContainerConfig").and_then(Value::as_object) {
        let mut c = Map::new();
        for k in ["image", "webServerMode", "healthCheckConfig"] {
            if let Some(v) = ccc.get(k) {
                c.insert(k.into(), v.clone());
            }
        }
        // FC 2.0's command/args are JSON arrays written as strings ('["python", "app.py"]').
        for (old, new) in [("command", "entrypoint"), ("args", "command")] {
            match ccc.get(old) {
                None | Some(Value::Null) => {}
                Some(Value::String(s)) if s.trim().is_empty() => {}
                Some(Value::String(s)) => match serde_json::from_str::<Vec<String>>(s) {
                    Ok(list) => {
                        c.insert(new.into(), json!(list));
                    }
                    Err(_) => {
                        return Err((
                            format!("function.customContainerConfig.{old}"),
                            format!("{s:?} is not a JSON list of strings (e.g. '[\"python\", \"app.py\"]')"),
                        ))
                    }
                },
                Some(v) => {
                    c.insert(new.into(), v.clone());
                }
            }
        }
        if let Some(port) = f.get("caPort") {
            c.insert("port".into(), port.clone());
        }
        out.insert("customContainerConfig".into(), Value::Object(c));
    } else if let Some(port) = f.get("caPort") {
        let crc = out.entry("customRuntimeConfig").or_insert_with(|| json!({}));
        if let Some(m) = crc.as_object_mut() {
            m.entry("port").or_insert(port.clone());
        }
    }
    if let Some(handler) = f.get("initializer").filter(|h| !h.is_null()) {
        let mut init = json!({ "handler": handler });
        if let Some(t) = f.get("initializationTimeout") {
            init["timeout"] = t.clone();
        }
        let lc = out.entry("instanceLifecycleConfig").or_insert_with(|| json!({}));
        if let Some(m) = lc.as_object_mut() {
            m.insert("initializer".into(), init);
        }
    }
    if let Some(ac) = f.get("asyncConfiguration").and_then(Value::as_object) {
        let mut a = Map::new();
        for k in ["maxAsyncRetryAttempts", "maxAsyncEventAgeInSeconds"] {
            if let Some(v) = ac.get(k) {
                a.insert(k.into(), v.clone());
            }
        }
        if let Some(dest) = ac.get("destination").and_then(Value::as_object) {
            let mut d = Map::new();
            for k in ["onSuccess", "onFailure"] {
                if let Some(arn) = dest.get(k).and_then(Value::as_str) {
                    d.insert(k.into(), json!({ "destination": fc3_arn(arn) }));
                }
            }
            a.insert("destinationConfig".into(), Value::Object(d));
        }
        out.insert("asyncInvokeConfig".into(), Value::Object(a));
    }
    // `gpuMemorySize` goes with `instanceType`.
    if let Some(kind) = f.get("instanceType").and_then(Value::as_str).filter(|t| t.starts_with("fc.gpu.")) {
        out.insert("gpuConfig".into(), json!({ "gpuType": kind, "gpuMemorySize": f.get("gpuMemorySize").cloned().unwrap_or(Value::Null) }));
    }
    if let Some(ext) = props.get("fcsup").filter(|_| !out.contains_key("fcsup")) {
        out.insert("fcsup".into(), ext.clone());
    }
    Ok(Value::Object(out))
}

/// The FC 2.0 name (below `props`) of FC 3.0 key `key` (below `props`), for messages.
pub fn key_in_fc2(key: &str) -> String {
    const RENAMED: [(&str, &str); 12] = [
        ("functionName", "function.name"),
        ("code", "function.codeUri"),
        ("region", "region"),
        ("customRuntimeConfig.port", "function.caPort"),
        ("customContainerConfig.port", "function.caPort"),
        ("customContainerConfig.entrypoint", "function.customContainerConfig.command"),
        ("customContainerConfig.command", "function.customContainerConfig.args"),
        ("instanceLifecycleConfig.initializer.timeout", "function.initializationTimeout"),
        ("instanceLifecycleConfig.initializer", "function.initializer"),
        ("asyncInvokeConfig.destinationConfig", "function.asyncConfiguration.destination"),
        ("asyncInvokeConfig", "function.asyncConfiguration"),
        ("gpuConfig", "function.instanceType"),
    ];
    for (new, old) in RENAMED {
        if let Some(rest) = key.strip_prefix(new).filter(|r| r.is_empty() || r.starts_with('.')) {
            return format!("{old}{rest}");
        }
    }
    format!("function.{key}")
}

/// FC 2.0's function ARN (`acs:fc:R:U:services/S[.Q]/functions/F`) as FC 3.0's
/// (`acs:fc:R:U:functions/F`); anything else unchanged.
fn fc3_arn(arn: &str) -> String {
    match (arn.find("services/"), arn.find("/functions/")) {
        (Some(s), Some(f)) if s < f => format!("{}{}", &arn[..s], &arn[f + 1..]),
        _ => arn.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn components_are_told_apart() {
        assert_eq!(component(&json!({"component": "fc3", "props": {}})), Component::Fc3);
        assert_eq!(component(&json!({"component": "devsapp/fc3@0.1.4", "props": {}})), Component::Fc3);
        assert_eq!(component(&json!({"component": "devsapp/fc", "props": {}})), Component::Fc2);
        assert_eq!(component(&json!({"component": "fc", "props": {}})), Component::Fc2);
        assert_eq!(component(&json!({"component": "fc3-domain", "props": {}})), Component::Other("fc3-domain".into()));
        assert_eq!(component(&json!({"props": {"runtime": "custom"}})), Component::Fc3);
        assert_eq!(component(&json!({"props": {"function": {"name": "f"}}})), Component::Fc2);
    }

    #[test]
    fn fc2_names_become_fc3_names() {
        let p = json!({
            "region": "cn-shanghai",
            "service": {"name": "svc", "internetAccess": true},
            "function": {
                "name": "web", "runtime": "custom-container", "memorySize": 1024, "timeout": 30, "caPort": 8080,
                "instanceConcurrency": 10, "initializer": "index.init", "initializationTimeout": 20,
                "customContainerConfig": {"image": "oci:img", "command": "[\"python\"]", "args": "[\"app.py\"]", "accelerationType": "Default"},
                "instanceLifecycleConfig": {"preFreeze": {"handler": "pf", "timeout": 5}},
                "asyncConfiguration": {"maxAsyncRetryAttempts": 1, "destination": {"onSuccess": "acs:fc:::services/svc.LATEST/functions/ok"}}
            },
            "triggers": [{"name": "http", "type": "http"}]
        });
        let v = to_fc3(&p).unwrap();
        assert_eq!(v["functionName"], "web");
        assert_eq!(v["region"], "cn-shanghai");
        assert_eq!(v["customContainerConfig"]["entrypoint"], json!(["python"]));
        assert_eq!(v["customContainerConfig"]["command"], json!(["app.py"]));
        assert_eq!(v["customContainerConfig"]["port"], 8080);
        assert_eq!(v["instanceLifecycleConfig"]["initializer"], json!({"handler": "index.init", "timeout": 20}));
        assert_eq!(v["instanceLifecycleConfig"]["preFreeze"]["handler"], "pf");
        assert_eq!(v["asyncInvokeConfig"]["maxAsyncRetryAttempts"], 1);
        assert_eq!(v["asyncInvokeConfig"]["destinationConfig"]["onSuccess"]["destination"], "acs:fc:::functions/ok");
        let custom = to_fc3(&json!({"function": {"name": "c", "runtime": "custom", "codeUri": "./code.zip", "caPort": 9001}})).unwrap();
        assert_eq!(custom["code"], "./code.zip");
        assert_eq!(custom["customRuntimeConfig"]["port"], 9001);
        let bad = to_fc3(&json!({"function": {"customContainerConfig": {"command": "python app.py"}}})).unwrap_err();
        assert_eq!(bad.0, "function.customContainerConfig.command");
        assert_eq!(to_fc3(&json!({"service": {}})).unwrap_err().0, "function");
        assert_eq!(key_in_fc2("memorySize"), "function.memorySize");
        assert_eq!(key_in_fc2("customContainerConfig.port"), "function.caPort");
        assert_eq!(key_in_fc2("instanceLifecycleConfig.initializer.timeout"), "function.initializationTimeout");
        assert_eq!(key_in_fc2("instanceLifecycleConfig.preFreeze.timeout"), "function.instanceLifecycleConfig.preFreeze.timeout");
    }
}
