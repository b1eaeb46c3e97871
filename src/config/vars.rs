//! Serverless Devs variables (`${...}`) as `s` resolves them before a component sees its props.
//!
//! What `s` accepts (Serverless-Devs docs, "Yaml 变量赋值" / yaml.md "Variable assignment"; its
//! resolver is `packages/parse-spec` in github.com/Serverless-Devs/toolkit):
//! - `${vars.x}`: the file's top-level `vars`;
//! - `${env('NAME')}`, `${env('NAME', 'default')}`, `${env(NAME)}`, and `${env.NAME}`: the
//!   environment of the process reading the file (`s` throws `env('NAME') not found` when it is
//!   unset and has no default; so does fcsup);
//! - `${this.name}`, `${this.props.x}`, `${this.component}`, `${this.access}`: the resource the
//!   value belongs to;
//! - `${resources.r.props.x}` (and Serverless Devs 1.x's `${r.props.x}` / `services`): another
//!   resource's props, themselves resolved;
//! - `${config('AccountID')}`: `s config`'s credentials; fcsup has none, so it reads the Alibaba
//!   Cloud SDKs' variables (`ALIBABA_CLOUD_ACCOUNT_ID`, `ALIBABA_CLOUD_ACCESS_KEY_ID`, …);
//! - `${file('./p')}` (text of a file), `${path('./p')}` (absolute path of an existing file) and
//!   `${json(...)}`, relative paths against the file's directory.
//!
//! `${resources.r.output.x}` is a value that `s deploy` reads back from the cloud: fcsup deploys
//! nothing, so it is refused with an error saying so. A value that is one `${...}` alone takes the
//! variable's type (a map, a number); inside a longer string the variable is written as text, as
//! `s` does.

use std::path::Path;

use serde_json::{Map, Value};

/// How deep variables may refer to variables (a loop would go on for ever).
const MAX_DEPTH: usize = 16;

/// A variable that cannot be resolved: the dotted key whose value holds it and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VarError {
    /// Dotted key, e.g. `resources.demo.props.environmentVariables.REGION`.
    pub key: String,
    /// What is wrong, naming the variable.
    pub message: String,
}

/// Where a value is resolved: the file's parts a variable may name.
#[derive(Clone, Copy)]
pub struct Scope<'a> {
    /// Top-level `vars` (unresolved; resolved on use).
    pub vars: &'a Value,
    /// `resources` (or 1.x `services`): resource key → resource (`component`, `props`, …).
    pub resources: &'a Map<String, Value>,
    /// The key `resources` had in the file (`resources` or `services`), for messages.
    pub section: &'a str,
    /// The resource being resolved, by key.
    pub this: Option<&'a str>,
    /// The file's top-level `access`.
    pub access: Option<&'a str>,
    /// The file's directory.
    pub base: &'a Path,
    /// The environment.
    pub env: &'a dyn Fn(&str) -> Option<String>,
}

impl Scope<'_> {
    fn with_this<'b>(&'b self, this: &'b str) -> Scope<'b> {
        Scope {
            vars: self.vars,
            resources: self.resources,
            section: self.section,
            this: Some(this),
            access: self.access,
            base: self.base,
            env: self.env,
        }
    }
}

/// Resolves `props` (at dotted `key`) in place, strictly in the keys in `read`; in any other
/// key (`role: acs:ram::${config('AccountID')}:role/…`, `vpcConfig`, `triggers`) a variable
/// that cannot be resolved only drops that key, with a warning: fcsup would ignore it anyway,
/// and `s` needs cloud credentials fcsup does not have.
pub fn resolve_props(props: &mut Value, key: &str, scope: &Scope<'_>, read: &[&str]) -> Result<(), VarError> {
    let Value::Object(map) = props else { return resolve(props, key, scope) };
    let mut dropped = Vec::new();
    for (k, v) in map.iter_mut() {
        match resolve(v, &join(key, k), scope) {
            Ok(()) => {}
            Err(e) if !read.contains(&k.as_str()) => {
                tracing::warn!("{}: {} (fcsup does not read {k}: ignored)", e.key, e.message);
                dropped.push(k.clone());
            }
            Err(e) => return Err(e),
        }
    }
    for k in dropped {
        map.remove(&k);
    }
    Ok(())
}

/// The keys a derived `Deserialize` struct reads (serde hands them to `deserialize_struct`).
pub fn struct_fields<T: serde::de::DeserializeOwned>() -> &'static [&'static str] {
    use serde::de::{Deserializer, Error as _, Visitor};
    struct Fields<'a>(&'a mut &'static [&'static str]);
    impl<'de> Deserializer<'de> for Fields<'_> {
        type Error = serde::de::value::Error;
        fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Self::Error> {
            Err(Self::Error::custom("not a struct"))
        }
        fn deserialize_struct<V: Visitor<'de>>(self, _: &'static str, fields: &'static [&'static str], _: V) -> Result<V::Value, Self::Error> {
            *self.0 = fields;
            Err(Self::Error::custom("fields read"))
        }
        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf option unit unit_struct
            newtype_struct seq tuple tuple_struct map enum identifier ignored_any
        }
    }
    let mut fields: &'static [&'static str] = &[];
    let _ = T::deserialize(Fields(&mut fields));
    fields
}

/// Resolves every `${...}` in `value` (found at dotted `key`) in place.
pub fn resolve(value: &mut Value, key: &str, scope: &Scope<'_>) -> Result<(), VarError> {
    resolve_at(value, key, scope, 0)
}

fn resolve_at(value: &mut Value, key: &str, scope: &Scope<'_>, depth: usize) -> Result<(), VarError> {
    match value {
        Value::String(s) if s.contains("${") => {
            *value = resolve_string(s, scope, depth).map_err(|message| VarError { key: key.to_string(), message })?;
            Ok(())
        }
        Value::Array(items) => {
            for (i, v) in items.iter_mut().enumerate() {
                resolve_at(v, &format!("{key}[{i}]"), scope, depth)?;
            }
            Ok(())
        }
        Value::Object(map) => {
            for (k, v) in map.iter_mut() {
                resolve_at(v, &join(key, k), scope, depth)?;
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

fn join(key: &str, k: &str) -> String {
    if key.is_empty() {
        k.to_string()
    } else {
        format!("{key}.{k}")
    }
}

/// One string: `${...}` alone keeps the variable's type; anything else is text.
fn resolve_string(s: &str, scope: &Scope<'_>, depth: usize) -> Result<Value, String> {
    if depth > MAX_DEPTH {
        return Err(format!("variables refer to each other more than {MAX_DEPTH} deep (a loop?) at {s:?}"));
    }
    let mut out = String::new();
    let mut rest = s;
    let mut only: Option<Value> = None;
    while let Some(start) = rest.find("${") {
        let Some(len) = closing(&rest[start + 2..]) else {
            return Err(format!("{rest:?}: a '${{' without its closing '}}'"));
        };
        let expr = &rest[start + 2..start + 2 + len];
        let whole = &rest[start..start + 3 + len];
        let v = eval(expr, scope, depth).map_err(|e| if e.starts_with(whole) { e } else { format!("{whole}: {e}") })?;
        if start == 0 && len + 3 == s.len() {
            only = Some(v);
            break;
        }
        out.push_str(&rest[..start]);
        match v {
            Value::String(t) => out.push_str(&t),
            Value::Null => return Err(format!("{whole}: the variable is empty (null)")),
            other => out.push_str(&other.to_string()),
        }
        rest = &rest[start + 3 + len..];
    }
    if let Some(v) = only {
        return Ok(v);
    }
    out.push_str(rest);
    Ok(Value::String(out))
}

/// Where the `}` closing an expression is in `s`, skipping quoted text (`json('{}')`).
fn closing(s: &str) -> Option<usize> {
    let mut quote = None;
    for (i, c) in s.char_indices() {
        match (quote, c) {
            (None, '\'' | '"') => quote = Some(c),
            (Some(q), c) if c == q => quote = None,
            (None, '}') => return Some(i),
            _ => {}
        }
    }
    None
}

/// A parsed `${...}` expression.
#[derive(Debug, Clone, PartialEq)]
enum Expr {
    /// `'text'`, `"text"`, or a bare word as a function's argument (`env(NAME)`).
    Text(String),
    /// `a.b[0].c`.
    Path(Vec<String>),
    /// `f(args)`.
    Call(String, Vec<Expr>),
}

struct Parser<'a> {
    s: &'a [u8],
    at: usize,
}

impl Parser<'_> {
    fn ws(&mut self) {
        while self.at < self.s.len() && self.s[self.at].is_ascii_whitespace() {
            self.at += 1;
        }
    }

    fn peek(&mut self) -> Option<u8> {
        self.ws();
        self.s.get(self.at).copied()
    }

    fn word(&mut self) -> Option<String> {
        self.ws();
        let start = self.at;
        while self.at < self.s.len() && (self.s[self.at].is_ascii_alphanumeric() || matches!(self.s[self.at], b'_' | b'-' | b'$')) {
            self.at += 1;
        }
        (self.at > start).then(|| String::from_utf8_lossy(&self.s[start..self.at]).into_owned())
    }

    fn quoted(&mut self, q: u8) -> Result<String, String> {
        self.at += 1;
        let start = self.at;
        while self.at < self.s.len() && self.s[self.at] != q {
            self.at += 1;
        }
        if self.at == self.s.len() {
            return Err("a string without its closing quote".into());
        }
        let t = String::from_utf8_lossy(&self.s[start..self.at]).into_owned();
        self.at += 1;
        Ok(t)
    }

    fn expr(&mut self, in_call: bool) -> Result<Expr, String> {
        match self.peek() {
            Some(q @ (b'\'' | b'"')) => return Ok(Expr::Text(self.quoted(q)?)),
            None => return Err("an empty expression".into()),
            _ => {}
        }
        let Some(first) = self.word() else {
            return Err(format!("unexpected {:?}", char::from(self.s[self.at])));
        };
        if self.peek() == Some(b'(') {
            self.at += 1;
            let mut args = Vec::new();
            if self.peek() == Some(b')') {
                self.at += 1;
            } else {
                loop {
                    args.push(self.expr(true)?);
                    match self.peek() {
                        Some(b',') => self.at += 1,
                        Some(b')') => {
                            self.at += 1;
                            break;
                        }
                        _ => return Err(format!("{first}(...): expected ',' or ')'")),
                    }
                }
            }
            return Ok(Expr::Call(first, args));
        }
        let mut path = vec![first];
        loop {
            match self.peek() {
                Some(b'.') => {
                    self.at += 1;
                    path.push(self.word().ok_or("a '.' not followed by a name")?);
                }
                Some(b'[') => {
                    self.at += 1;
                    let seg = match self.peek() {
                        Some(q @ (b'\'' | b'"')) => self.quoted(q)?,
                        _ => self.word().ok_or("'[' not followed by an index or a quoted key")?,
                    };
                    if self.peek() != Some(b']') {
                        return Err("'[' without its ']'".into());
                    }
                    self.at += 1;
                    path.push(seg);
                }
                _ => break,
            }
        }
        if in_call && path.len() == 1 && !matches!(path[0].as_str(), "vars" | "this" | "resources" | "services") {
            // `env(NAME)`: s 1.x took bare words as names.
            return Ok(Expr::Text(path.remove(0)));
        }
        Ok(Expr::Path(path))
    }
}

fn parse(expr: &str) -> Result<Expr, String> {
    let mut p = Parser { s: expr.as_bytes(), at: 0 };
    let e = p.expr(false)?;
    if p.peek().is_some() {
        return Err(format!("unexpected {:?} (fcsup reads variables and env/config/file/path/json calls, not expressions)", &expr[p.at..]));
    }
    Ok(e)
}

fn eval(expr: &str, scope: &Scope<'_>, depth: usize) -> Result<Value, String> {
    let e = parse(expr)?;
    value_of(&e, scope, depth)
}

fn text_arg(name: &str, args: &[Expr], i: usize, scope: &Scope<'_>, depth: usize) -> Result<String, String> {
    let Some(a) = args.get(i) else { return Err(format!("{name}() needs an argument")) };
    match value_of(a, scope, depth)? {
        Value::String(s) => Ok(s),
        other => Ok(other.to_string()),
    }
}

/// Serverless Devs' `config()` keys and the variables fcsup reads them from.
const CONFIG_KEYS: [(&str, &str); 4] = [
    ("AccountID", "ALIBABA_CLOUD_ACCOUNT_ID"),
    ("AccessKeyID", "ALIBABA_CLOUD_ACCESS_KEY_ID"),
    ("AccessKeySecret", "ALIBABA_CLOUD_ACCESS_KEY_SECRET"),
    ("SecurityToken", "ALIBABA_CLOUD_SECURITY_TOKEN"),
];

fn value_of(e: &Expr, scope: &Scope<'_>, depth: usize) -> Result<Value, String> {
    match e {
        Expr::Text(t) => Ok(Value::String(t.clone())),
        Expr::Call(name, args) => call(name, args, scope, depth),
        Expr::Path(path) => lookup(path, scope, depth),
    }
}

fn call(name: &str, args: &[Expr], scope: &Scope<'_>, depth: usize) -> Result<Value, String> {
    match name {
        "env" => {
            let var = text_arg("env", args, 0, scope, depth)?;
            match ((scope.env)(&var), args.get(1)) {
                (Some(v), _) if !v.is_empty() => Ok(Value::String(v)),
                (_, Some(default)) => value_of(default, scope, depth),
                _ => Err(format!("the environment variable {var} is not set (give a default: env('{var}', 'value'))")),
            }
        }
        "config" => {
            let key = text_arg("config", args, 0, scope, depth)?;
            let Some((_, var)) = CONFIG_KEYS.iter().find(|(k, _)| *k == key) else {
                let known: Vec<_> = CONFIG_KEYS.iter().map(|(k, _)| *k).collect();
                return Err(format!("config('{key}') is not a key fcsup knows ({})", known.join(", ")));
            };
            match (scope.env)(var) {
                Some(v) if !v.is_empty() => Ok(Value::String(v)),
                _ => Err(format!("fcsup has no `s config` credentials: set {var} to give config('{key}') a value")),
            }
        }
        "file" => {
            let p = scope.base.join(text_arg("file", args, 0, scope, depth)?);
            std::fs::read_to_string(&p).map(Value::String).map_err(|e| format!("cannot read {}: {e}", p.display()))
        }
        "path" => {
            let p = scope.base.join(text_arg("path", args, 0, scope, depth)?);
            match std::fs::canonicalize(&p) {
                Ok(abs) => Ok(Value::String(abs.display().to_string())),
                Err(e) => Err(format!("{}: {e}", p.display())),
            }
        }
        "json" => {
            let t = text_arg("json", args, 0, scope, depth)?;
            serde_json::from_str(&t).map_err(|e| format!("not JSON: {e}"))
        }
        _ => Err(format!("unknown function {name}(): Serverless Devs has env(), config(), file(), path() and json()")),
    }
}

fn get<'v>(v: &'v Value, seg: &str) -> Option<&'v Value> {
    match v {
        Value::Object(m) => m.get(seg),
        Value::Array(a) => seg.parse::<usize>().ok().and_then(|i| a.get(i)),
        _ => None,
    }
}

/// Follows `rest` into `root` (found at `at`), then resolves what it found in `scope`.
fn follow(root: &Value, at: &str, rest: &[String], scope: &Scope<'_>, depth: usize) -> Result<Value, String> {
    let mut v = root;
    let mut seen = at.to_string();
    for seg in rest {
        v = match get(v, seg) {
            Some(next) => next,
            None => {
                let has = match v {
                    Value::Object(m) if !m.is_empty() => format!(" (it has {})", m.keys().cloned().collect::<Vec<_>>().join(", ")),
                    _ => String::new(),
                };
                return Err(format!("unknown variable: {seen} has no {seg:?}{has}"));
            }
        };
        seen = format!("{seen}.{seg}");
    }
    let mut out = v.clone();
    resolve_at(&mut out, &seen, scope, depth + 1).map_err(|e| e.message)?;
    Ok(out)
}

fn lookup(path: &[String], scope: &Scope<'_>, depth: usize) -> Result<Value, String> {
    let root = path[0].as_str();
    match root {
        "vars" => {
            // vars may use env(), config() …, but no resource's `this`.
            let s = Scope {
                vars: scope.vars,
                resources: scope.resources,
                section: scope.section,
                this: None,
                access: scope.access,
                base: scope.base,
                env: scope.env,
            };
            follow(scope.vars, "vars", &path[1..], &s, depth)
        }
        "env" => match path.get(1..) {
            Some([name]) => call("env", &[Expr::Text(name.clone())], scope, depth),
            _ => Err("env takes one name: ${env.NAME} or ${env('NAME')}".into()),
        },
        "this" => {
            let Some(name) = scope.this.filter(|t| !t.is_empty()) else {
                return Err("${this...} is only defined inside a resource".into());
            };
            match path.get(1).map(String::as_str) {
                Some("name") if path.len() == 2 => Ok(Value::String(name.to_string())),
                Some("access") if path.len() == 2 => {
                    let own = scope.resources.get(name).and_then(|r| r.get("access")).and_then(Value::as_str);
                    own.or(scope.access).map(|a| Value::String(a.into())).ok_or_else(|| "this.access: the file sets no access".into())
                }
                Some("component" | "props") => resource(name, &path[1..], scope, depth),
                _ => Err(format!("unknown variable this.{}: this has name, access, component and props", path[1..].join("."))),
            }
        }
        "resources" | "services" => match path.get(1) {
            Some(name) => resource(name, &path[2..], scope, depth),
            None => Err(format!("{root} needs a resource name: ${{{root}.NAME.props.KEY}}")),
        },
        // Serverless Devs 1.x: `${name.props.x}`.
        name if scope.resources.contains_key(name) && path.len() > 1 => resource(name, &path[1..], scope, depth),
        _ => Err(format!(
            "unknown variable {}: fcsup knows vars, env, this, {}.<name>.props, config(), env(), file(), path() and json()",
            path.join("."),
            scope.section
        )),
    }
}

/// `rest` (`props.x…` or `component`) of resource `name`.
fn resource(name: &str, rest: &[String], scope: &Scope<'_>, depth: usize) -> Result<Value, String> {
    let Some(r) = scope.resources.get(name) else {
        let known: Vec<_> = scope.resources.keys().cloned().collect();
        return Err(format!("unknown variable: {} has no resource {name:?} (it has {})", scope.section, known.join(", ")));
    };
    let at = format!("{}.{name}", scope.section);
    match rest.first().map(String::as_str) {
        Some("props" | "component") => follow(r, &at, rest, &scope.with_this(name), depth),
        Some("output" | "outputs") => Err(format!(
            "{at}.output is what `s deploy` reads back from the cloud; fcsup deploys nothing, so there is no output to read (write the value itself)"
        )),
        _ => Err(format!("unknown variable {at}.{}: a resource has props (and, after `s deploy`, output)", rest.join("."))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn with(doc: Value, this: Option<&str>, value: Value) -> Result<Value, VarError> {
        let env = |k: &str| match k {
            "HOME_REGION" => Some("cn-shanghai".to_string()),
            "ALIBABA_CLOUD_ACCOUNT_ID" => Some("1234".to_string()),
            "EMPTY" => Some(String::new()),
            _ => None,
        };
        let empty = Map::new();
        let resources = doc.get("resources").and_then(Value::as_object).unwrap_or(&empty);
        let scope = Scope {
            vars: doc.get("vars").unwrap_or(&Value::Null),
            resources,
            section: "resources",
            this,
            access: Some("default"),
            base: Path::new("/nonexistent"),
            env: &env,
        };
        let mut v = value;
        resolve(&mut v, "k", &scope).map(|()| v)
    }

    fn doc() -> Value {
        json!({
            "vars": {"region": "cn-hangzhou", "fn": "hello", "mem": 512, "svc": {"name": "s1"}, "nested": "${vars.region}-x",
                     "fromEnv": "${env('HOME_REGION')}"},
            "resources": {
                "a": {"component": "fc3", "props": {"functionName": "${vars.fn}-a", "code": "./code", "memorySize": "${vars.mem}"}},
                "b": {"component": "fc3", "props": {"functionName": "b", "peer": "${resources.a.props.functionName}", "loop": "${this.props.loop}"}}
            }
        })
    }

    #[test]
    fn each_kind_resolves() {
        let d = doc();
        let r = |v: Value| with(d.clone(), Some("b"), v).unwrap();
        assert_eq!(r(json!("${vars.region}")), json!("cn-hangzhou"));
        assert_eq!(r(json!("${ vars.mem }")), json!(512), "alone: keeps its type");
        assert_eq!(r(json!("m${vars.mem}MB")), json!("m512MB"), "in text: written as text");
        assert_eq!(r(json!("${vars.svc}")), json!({"name": "s1"}));
        assert_eq!(r(json!("${vars['svc'].name}")), json!("s1"));
        assert_eq!(r(json!("${env('HOME_REGION')}")), json!("cn-shanghai"));
        assert_eq!(r(json!("${env(HOME_REGION)}")), json!("cn-shanghai"));
        assert_eq!(r(json!("${env.HOME_REGION}")), json!("cn-shanghai"));
        assert_eq!(r(json!("${env('NOPE', 'dflt')}")), json!("dflt"));
        assert_eq!(r(json!("${env('EMPTY', \"d\")}")), json!("d"), "s treats an empty value as unset");
        assert_eq!(r(json!("${this.name}")), json!("b"));
        assert_eq!(r(json!("${this.access}")), json!("default"));
        assert_eq!(r(json!("${this.component}")), json!("fc3"));
        assert_eq!(r(json!("${this.props.functionName}")), json!("b"));
        assert_eq!(r(json!("${resources.a.props.code}")), json!("./code"));
        assert_eq!(r(json!("${a.props.code}")), json!("./code"), "Serverless Devs 1.x form");
        assert_eq!(r(json!("acs:ram::${config('AccountID')}:role/r")), json!("acs:ram::1234:role/r"));
        assert_eq!(r(json!("${json('{\"x\": [1]}')}")), json!({"x": [1]}));
        assert_eq!(r(json!(["${vars.fn}", {"k": "${vars.region}"}])), json!(["hello", {"k": "cn-hangzhou"}]));
    }

    #[test]
    fn nested_variables_resolve_in_their_own_resource() {
        let d = doc();
        let r = |v: Value| with(d.clone(), Some("b"), v).unwrap();
        assert_eq!(r(json!("${vars.nested}")), json!("cn-hangzhou-x"));
        assert_eq!(r(json!("${vars.fromEnv}")), json!("cn-shanghai"));
        // a's functionName is itself `${vars.fn}-a`.
        assert_eq!(r(json!("${resources.a.props.functionName}")), json!("hello-a"));
        assert_eq!(r(json!("${resources.b.props.peer}")), json!("hello-a"));
        assert_eq!(r(json!("${resources.a.props.memorySize}")), json!(512));
    }

    #[test]
    fn unknown_variables_are_errors_naming_them() {
        let d = doc();
        let e = |v: &str| with(d.clone(), Some("b"), json!(v)).unwrap_err();
        let err = e("${vars.regoin}");
        assert_eq!(err.key, "k");
        assert!(err.message.contains("${vars.regoin}") && err.message.contains("has no \"regoin\"") && err.message.contains("region"), "{err:?}");
        assert!(e("${env('NOPE')}").message.contains("NOPE is not set"));
        assert!(e("${env.NOPE}").message.contains("NOPE is not set"));
        assert!(e("${resources.zz.props.x}").message.contains("no resource \"zz\""));
        assert!(e("${resources.a.output.url}").message.contains("deploys nothing"));
        assert!(e("${stage}").message.contains("unknown variable stage"));
        assert!(e("${this.props.loop}").message.contains("loop"), "a self-reference ends");
        assert!(e("${config('Region')}").message.contains("config('Region')"));
        assert!(e("${opt(stage)}").message.contains("unknown function opt()"));
        assert!(e("${vars.mem + 1}").message.contains("not expressions"));
        assert!(e("x ${vars.region").message.contains("closing"));
        assert!(with(d.clone(), None, json!("${this.name}")).unwrap_err().message.contains("inside a resource"));
    }

    #[derive(serde::Deserialize)]
    #[serde(rename_all = "camelCase")]
    #[allow(dead_code)]
    struct Read {
        function_name: String,
    }

    #[test]
    fn keys_fcsup_ignores_are_dropped_not_refused() {
        let d = doc();
        let env = |_: &str| None;
        let resources = d["resources"].as_object().unwrap();
        let scope = Scope { vars: &d["vars"], resources, section: "resources", this: Some("a"), access: None, base: Path::new("/"), env: &env };
        let mut props = json!({"functionName": "${vars.fn}", "role": "acs:ram::${config('AccountID')}:role/r"});
        resolve_props(&mut props, "p", &scope, struct_fields::<Read>()).unwrap();
        assert_eq!(props, json!({"functionName": "hello"}));
        let mut props = json!({"functionName": "${vars.nope}"});
        assert_eq!(resolve_props(&mut props, "p", &scope, struct_fields::<Read>()).unwrap_err().key, "p.functionName");
        assert_eq!(struct_fields::<Read>(), ["functionName"]);
    }

    #[test]
    fn file_and_path_read_relative_to_the_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.json"), "{\"info\": \"hi\"}").unwrap();
        let env = |_: &str| None;
        let resources = Map::new();
        let scope = Scope { vars: &Value::Null, resources: &resources, section: "resources", this: None, access: None, base: dir.path(), env: &env };
        let mut v = json!({"f": "${file('./a.json')}", "j": "${json(file('./a.json'))}", "p": "${path('./a.json')}"});
        resolve(&mut v, "", &scope).unwrap();
        assert_eq!(v["f"], json!("{\"info\": \"hi\"}"));
        assert_eq!(v["j"], json!({"info": "hi"}));
        assert_eq!(v["p"], json!(std::fs::canonicalize(dir.path().join("a.json")).unwrap().display().to_string()));
        let mut bad = json!("${file('./missing')}");
        assert!(resolve(&mut bad, "x", &scope).unwrap_err().message.contains("missing"));
    }
}
