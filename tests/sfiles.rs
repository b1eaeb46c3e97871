//! Privileged tests of issue 15 (Serverless Devs files, client addresses): files written as
//! the public templates write them — `${vars...}`, `${env(...)}`, an `fc3-domain` resource, an
//! FC 2.0 (`component: fc`) file, a zip code package — served by the real fcsup binary, and
//! HTTP triggers whose functions see the client's address.
#![allow(clippy::tests_outside_test_module, reason = "an integration test file is a crate of its own, with no test module to sit in")]

mod common;

use std::io::Write as _;
use std::path::Path;
use std::time::Duration;

use common::*;

/// As start-fc3's templates write it: vars, an env() default, a custom domain resource.
fn template(code: &Path) -> String {
    format!(
        r#"edition: 3.0.0
name: start-fc3-custom
access: "default"
vars:
  region: "cn-beijing"
  functionName: "web-${{env('FCSUP_TEST_STAGE')}}"
resources:
  web_app:
    component: fc3
    actions:
      pre-deploy:
        - run: pip3 install -r requirements.txt -t .
          path: ./code
    props:
      region: ${{vars.region}}
      functionName: ${{vars.functionName}}
      runtime: custom.debian10
      code: {code}
      memorySize: 512
      timeout: 10
      role: acs:ram::${{config('AccountID')}}:role/aliyunfcdefaultrole
      environmentVariables:
        REGION: ${{vars.region}}
        LEVEL: ${{env('FCSUP_TEST_UNSET', 'info')}}
        SELF: ${{this.name}}
      customRuntimeConfig:
        command: [/usr/bin/python3, server.py]
        port: 9000
      triggers:
        - triggerName: httpTrigger
          triggerType: http
          triggerConfig:
            authType: anonymous
            methods: [GET, POST]
  fc3_domain_0:
    component: fc3-domain
    props:
      region: ${{vars.region}}
      domainName: auto
      protocol: HTTP
      routeConfig:
        routes:
          - functionName: ${{resources.web_app.props.functionName}}
            methods: [GET, POST]
            path: /*
"#,
        code = code.display()
    )
}

#[test]
fn a_template_with_variables_and_a_domain_serves() {
    if !privileged() {
        return;
    }
    let mut f = Fcsup::serve_file_env(&template(&fixture_dir()), &[], &[("FCSUP_TEST_STAGE", "prod")]);
    f.wait_line(
        "naming the skipped resource",
        |l| l.contains("fc3_domain_0") && l.contains("fc3-domain") && l.contains("skipped"),
        Duration::from_secs(5),
    );
    let r = f.invoke("web-prod", r#"{"op": "env"}"#);
    assert_eq!(r.status, 200, "{}", r.text());
    let env = &r.json()["env"];
    assert_eq!(env["REGION"], "cn-beijing");
    assert_eq!(env["LEVEL"], "info");
    assert_eq!(env["SELF"], "web_app");
    assert_eq!(env["FC_REGION"], "cn-beijing");
    let phantom = f.invoke("fc3_domain_0", "{}");
    assert_eq!(phantom.status, 404, "not a function: {}", phantom.text());
    f.stop_and_check_clean();
    // Without the variable the file is refused, naming the key and the variable.
    let err = serve_failing(&template(&fixture_dir()), &[]);
    assert!(err.contains("resources.web_app.props.functionName") && err.contains("FCSUP_TEST_STAGE is not set"), "{err}");
}

#[test]
fn an_fc2_file_serves() {
    if !privileged() {
        return;
    }
    let yaml = format!(
        r#"edition: 1.0.0
name: fc2-web
access: default
vars:
  region: cn-hangzhou
services:
  framework:
    component: devsapp/fc
    props:
      region: ${{vars.region}}
      service:
        name: web-framework
        internetAccess: true
      function:
        name: flask-web
        runtime: custom
        codeUri: {code}
        handler: index.handler
        memorySize: 1024
        timeout: 10
        caPort: 9000
        instanceConcurrency: 2
        customRuntimeConfig:
          command: [/usr/bin/python3]
          args: [server.py]
        environmentVariables:
          SERVICE: ${{this.props.service.name}}
      triggers:
        - name: httpTrigger
          type: http
          config:
            authType: anonymous
            methods: [GET, POST]
"#,
        code = fixture_dir().display()
    );
    let mut f = Fcsup::serve_file(&yaml, &[]);
    let r = f.invoke("flask-web", r#"{"op": "env"}"#);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["env"]["SERVICE"], "web-framework");
    let via_http = http(&f.addr, "POST", "/http/flask-web/", &[], br#"{"op": "counters"}"#);
    assert_eq!(via_http.status, 200, "{}", via_http.text());
    f.stop_and_check_clean();
}

#[test]
fn a_zip_code_package_serves() {
    if !privileged() {
        return;
    }
    let pkg = tempfile::tempdir().unwrap();
    // As readable as a code directory must be (other users may enter its directory).
    std::fs::set_permissions(pkg.path(), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let mut w = zip::ZipWriter::new(std::fs::File::create(pkg.path().join("code.zip")).unwrap());
    w.start_file("server.py", zip::write::SimpleFileOptions::default().unix_permissions(0o644)).unwrap();
    w.write_all(&std::fs::read(fixture_dir().join("server.py")).unwrap()).unwrap();
    w.finish().unwrap();
    let cache = pkg.path().join("cache");
    let yaml = format!(
        "edition: 3.0.0\nfcsup:\n  codeCache: {}\nresources:\n  zipped:\n    component: fc3\n    props:\n      code: {}\n      memorySize: 1024\n      timeout: 10\n      customRuntimeConfig:\n        command: [/usr/bin/python3, server.py]\n",
        cache.display(),
        pkg.path().join("code.zip").display()
    );
    let mut f = Fcsup::serve_file(&yaml, &[]);
    let r = f.invoke("zipped", r#"{"op": "counters"}"#);
    assert_eq!(r.status, 200, "{}", r.text());
    use std::os::unix::fs::PermissionsExt as _;
    assert_eq!(std::fs::metadata(&cache).unwrap().permissions().mode() & 0o777, 0o700);
    let unpacked: Vec<_> = std::fs::read_dir(&cache).unwrap().flatten().map(|e| e.path()).collect();
    assert_eq!(unpacked.len(), 1, "one package, one directory: {unpacked:?}");
    assert!(unpacked[0].join("server.py").is_file());
    f.stop_and_check_clean();
    // A package that would write outside its directory is refused at start.
    let mut w = zip::ZipWriter::new(std::fs::File::create(pkg.path().join("code.zip")).unwrap());
    w.add_symlink("server.py", "/etc/shadow", zip::write::SimpleFileOptions::default()).unwrap();
    w.finish().unwrap();
    let err = serve_failing(&yaml, &[]);
    assert!(err.contains("resources.zipped.props.code") && err.contains("symbolic link"), "{err}");
}

#[test]
fn http_triggers_see_the_client_address() {
    // A handler that answers with what FC's event says about the client.
    let code = tempfile::tempdir().unwrap();
    std::fs::write(
        code.path().join("index.py"),
        "import json\n\ndef handler(event, context):\n    ev = json.loads(event)\n    return {'statusCode': 201, 'body': json.dumps({'sourceIp': ev['requestContext']['http']['sourceIp'], 'forwardedFor': ev['headers'].get('X-Forwarded-For')})}\n",
    )
    .unwrap();
    let builtin = format!(
        "  py:\n    component: fc3\n    props:\n      runtime: python3.10\n      handler: index.handler\n      code: {}\n      memorySize: 256\n      timeout: 10\n",
        code.path().display()
    );
    let Some(mut f) = serve_if_privileged(&format!("{}{builtin}", fixture_props("web", ""))) else { return };
    // A custom runtime gets FC's headers: the peer appended to X-Forwarded-For, X-Real-IP and
    // X-Client-IP set to it whatever the client claimed.
    let r = http(&f.addr, "POST", "/http/web/", &[("x-forwarded-for", "203.0.113.9"), ("x-real-ip", "198.51.100.1")], br#"{"op": "headers"}"#);
    assert_eq!(r.status, 200, "{}", r.text());
    let h = &r.json()["headers"];
    assert_eq!(h["x-forwarded-for"], "203.0.113.9, 127.0.0.1");
    assert_eq!(h["x-real-ip"], "127.0.0.1");
    assert_eq!(h["x-client-ip"], "127.0.0.1");
    // A built-in runtime gets requestContext.http.sourceIp.
    let r = http(&f.addr, "GET", "/http/py/", &[], b"");
    assert_eq!(r.status, 201, "{}", r.text());
    let b = r.json();
    assert_eq!(b["sourceIp"], "127.0.0.1");
    assert_eq!(b["forwardedFor"], "127.0.0.1");
    f.stop_and_check_clean();
}
