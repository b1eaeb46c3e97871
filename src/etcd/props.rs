//! A function's `props` as the JSON etcd holds: the text a user sent (YAML or JSON) made JSON
//! without losing what YAML wrote as text, and its file-relative paths made absolute, since
//! every node reads the value from wherever its own working directory is.

use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};

use serde::Deserialize;
use serde_json::Value;

/// `props` (YAML or JSON, as `PUT /admin/functions/NAME` takes them) as JSON. What the process
/// gets as text (`environmentVariables`, the command lines) keeps the text YAML wrote: `1.10`
/// stays `"1.10"`, not the number 1.1.
pub fn to_json(text: &str) -> Result<Value, String> {
    let options = serde_saphyr::options! { strict_booleans: true };
    let mut value: Value = serde_saphyr::from_str_with_options(text, options).map_err(|e| e.to_string())?;
    if !value.is_object() {
        return Err("expected a map of props".into());
    }
    // The same text read as text: YAML's scalars are text until a type is asked for.
    #[derive(Deserialize, Default)]
    #[serde(default, rename_all = "camelCase")]
    struct Lists {
        command: Option<Vec<String>>,
        args: Option<Vec<String>>,
        entrypoint: Option<Vec<String>>,
    }
    #[derive(Deserialize, Default)]
    #[serde(default, rename_all = "camelCase")]
    struct Texts {
        environment_variables: BTreeMap<String, String>,
        custom_runtime_config: Lists,
        custom_container_config: Lists,
    }
    let texts: Texts = serde_saphyr::from_str(text).unwrap_or_default();
    let set = |slot: Option<&mut Value>, text: &str| {
        if let Some(v) = slot.filter(|v| !v.is_string() && !v.is_null()) {
            *v = Value::String(text.to_string());
        }
    };
    for (k, t) in &texts.environment_variables {
        set(value.get_mut("environmentVariables").and_then(|e| e.get_mut(k)), t);
    }
    for (section, lists) in [("customRuntimeConfig", &texts.custom_runtime_config), ("customContainerConfig", &texts.custom_container_config)] {
        for (key, list) in [("command", &lists.command), ("args", &lists.args), ("entrypoint", &lists.entrypoint)] {
            for (i, t) in list.iter().flatten().enumerate() {
                set(value.get_mut(section).and_then(|s| s.get_mut(key)).and_then(|l| l.get_mut(i)), t);
            }
        }
    }
    Ok(value)
}

/// The first path in `props` that is relative (`code`, whose default `./code` is; a layer
/// directory; a local image), which would resolve against a node's working directory.
pub fn relative_path(props: &Value) -> Option<String> {
    let map = props.as_object()?;
    if map.get("runtime").and_then(Value::as_str) == Some("custom-container") {
        let image = map.get("customContainerConfig")?.get("image")?.as_str()?;
        return ["oci:", "docker-archive:"].iter().find_map(|t| image.strip_prefix(t)).filter(|rest| !rest.starts_with('/')).map(str::to_string);
    }
    let code = map.get("code").and_then(Value::as_str).unwrap_or("./code");
    if !code.starts_with('/') {
        return Some(code.to_string());
    }
    if map.get("layers").and_then(Value::as_array).is_some_and(|l| !l.is_empty()) {
        let dir = map.get("fcsup").and_then(|e| e.get("layerDir")).and_then(Value::as_str).unwrap_or("layers");
        if !dir.starts_with('/') {
            return Some(dir.to_string());
        }
    }
    None
}

/// Makes the paths in `props` that resolve against the file's directory absolute against
/// `base`: `code` (default `./code`), a local image source (`oci:`, `docker-archive:`) and
/// `fcsup.layerDir` (default `layers`) when there are layers.
pub fn absolute_paths(props: &mut Value, base: &Path) {
    let Some(map) = props.as_object_mut() else { return };
    // `-f s.yaml` (the default) has the base "": it names the working directory, which other
    // nodes do not share.
    let base =
        if base.is_absolute() { base.to_path_buf() } else { std::env::current_dir().map_or_else(|_| base.to_path_buf(), |cwd| cwd.join(base)) };
    let abs = |p: &str| -> String {
        let joined = base.join(p);
        // `./code` against `/srv` is `/srv/code`, not `/srv/./code`.
        let clean: PathBuf = joined.components().filter(|c| *c != Component::CurDir).collect();
        clean.display().to_string()
    };
    if map.get("runtime").and_then(Value::as_str) == Some("custom-container") {
        if let Some(image) = map.get_mut("customContainerConfig").and_then(|c| c.get_mut("image")) {
            let local = image.as_str().and_then(|i| {
                ["oci:", "docker-archive:"]
                    .iter()
                    .find_map(|t| i.strip_prefix(t).filter(|rest| !rest.starts_with('/')).map(|rest| format!("{t}{}", abs(rest))))
            });
            if let Some(l) = local {
                *image = Value::String(l);
            }
        }
        return;
    }
    let code = map.get("code").and_then(Value::as_str).unwrap_or("./code").to_string();
    map.insert("code".into(), Value::String(abs(&code)));
    if map.get("layers").and_then(Value::as_array).is_some_and(|l| !l.is_empty()) {
        let ext = map.entry("fcsup").or_insert_with(|| Value::Object(serde_json::Map::new()));
        if let Some(ext) = ext.as_object_mut() {
            let dir = ext.get("layerDir").and_then(Value::as_str).unwrap_or("layers").to_string();
            ext.insert("layerDir".into(), Value::String(abs(&dir)));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_paths_are_found_and_absolute_ones_pass() {
        let rel = |v: Value| relative_path(&v);
        assert_eq!(rel(serde_json::json!({"handler": "index.handler"})), Some("./code".into()), "the default code path");
        assert_eq!(rel(serde_json::json!({"code": "src"})), Some("src".into()));
        assert_eq!(rel(serde_json::json!({"code": "/srv/f"})), None);
        assert_eq!(rel(serde_json::json!({"code": "/srv/f", "layers": ["l"]})), Some("layers".into()));
        assert_eq!(rel(serde_json::json!({"code": "/srv/f", "layers": ["l"], "fcsup": {"layerDir": "/srv/l"}})), None);
        let image = |i: &str| serde_json::json!({"runtime": "custom-container", "customContainerConfig": {"image": i}});
        assert_eq!(rel(image("oci:img")), Some("img".into()));
        assert_eq!(rel(image("oci:/srv/img")), None);
        assert_eq!(rel(image("registry.example/app:1")), None);
        let mut pushed = serde_json::json!({"code": "./src"});
        absolute_paths(&mut pushed, Path::new("/srv"));
        assert_eq!(rel(pushed), None, "what push writes passes");
    }

    #[test]
    fn yaml_text_stays_text_and_types_stay_types() {
        let v =
            to_json("memorySize: 128\nenvironmentVariables:\n  V: 1.10\n  ON: yes\n  S: x\ncustomRuntimeConfig:\n  command: [python3, -p, 9000]\n")
                .unwrap();
        assert_eq!(v["memorySize"], 128);
        assert_eq!(v["environmentVariables"]["V"], "1.10");
        assert_eq!(v["environmentVariables"]["ON"], "yes");
        assert_eq!(v["customRuntimeConfig"]["command"][2], "9000");
        let j = to_json(r#"{"timeout": 3, "environmentVariables": {"A": 7}}"#).unwrap();
        assert_eq!(j["timeout"], 3);
        assert_eq!(j["environmentVariables"]["A"], "7");
        to_json("- a\n- b\n").unwrap_err();
        to_json("a: [").unwrap_err();
    }

    #[test]
    fn the_loader_keeps_each_functions_resolved_props() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("code")).unwrap();
        let yaml = "vars:\n  mem: 256\nresources:\n  f:\n    component: fc3\n    props:\n      memorySize: ${vars.mem}\n      environmentVariables:\n        V: 1.10\n      customRuntimeConfig:\n        command: [x]\n";
        let cfg = crate::config::Config::parse_with_env(yaml, Path::new("s.yaml"), dir.path(), &|_| None).unwrap();
        let mut v = cfg.props["f"].clone();
        assert_eq!(v["memorySize"], 256, "the variable resolved");
        assert_eq!(v["environmentVariables"]["V"], "1.10", "text as written");
        absolute_paths(&mut v, &cfg.base);
        assert_eq!(v["code"], dir.path().join("code").display().to_string());
        // What push writes parses back into the same function.
        let f = crate::config::Config::parse_function(&v.to_string(), "f", Path::new("/elsewhere")).unwrap();
        assert_eq!(f, cfg.functions[0]);
    }

    #[test]
    fn relative_paths_become_absolute_and_absolute_ones_stay() {
        let base = Path::new("/srv/app");
        let mut v = serde_json::json!({"code": "./code.zip", "layers": ["acs:fc:r:1:layers/n/versions/1"]});
        absolute_paths(&mut v, base);
        assert_eq!(v["code"], "/srv/app/code.zip");
        assert_eq!(v["fcsup"]["layerDir"], "/srv/app/layers");
        let mut v = serde_json::json!({});
        absolute_paths(&mut v, base);
        assert_eq!(v["code"], "/srv/app/code", "the default ./code");
        let mut v = serde_json::json!({"code": "/opt/f"});
        absolute_paths(&mut v, base);
        assert_eq!(v["code"], "/opt/f");
        let mut v = serde_json::json!({"runtime": "custom-container", "customContainerConfig": {"image": "oci:img:v1"}});
        absolute_paths(&mut v, base);
        assert_eq!(v["customContainerConfig"]["image"], "oci:/srv/app/img:v1");
        assert!(v.get("code").is_none(), "a container's code is its image");
        // `-f s.yaml` loads with the base "": the working directory, made absolute.
        let cwd = std::env::current_dir().unwrap();
        let mut v = serde_json::json!({"code": "./code", "layers": ["acs:fc:r:1:layers/n/versions/1"]});
        absolute_paths(&mut v, Path::new(""));
        assert_eq!(v["code"], cwd.join("code").display().to_string());
        assert_eq!(v["fcsup"]["layerDir"], cwd.join("layers").display().to_string());
        let mut v = serde_json::json!({"runtime": "custom-container", "customContainerConfig": {"image": "oci:img"}});
        absolute_paths(&mut v, Path::new("sub"));
        assert_eq!(v["customContainerConfig"]["image"], format!("oci:{}", cwd.join("sub/img").display()));
        let mut v = serde_json::json!({"runtime": "custom-container", "customContainerConfig": {"image": "registry.example/x:1"}});
        absolute_paths(&mut v, base);
        assert_eq!(v["customContainerConfig"]["image"], "registry.example/x:1");
    }
}
