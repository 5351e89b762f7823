//! The commands.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Read, Write};
use std::time::Duration;

use serde_json::{json, Map, Value};
use unicompute_client::{
    operation_error, Action, Answer, Client, Error, EventFilter, Instance, InstanceFilter,
    Metadata, Operation, OperationFilter, PullImage, Resources, StopOptions, UpdateInstance,
};

use crate::fmt::{ago, size, state_colour, table};
use crate::progress::{self, Drawer, Show};
use crate::{
    exit, exit_on_sigint, report, BackendsCommand, Cli, ClusterCommand, Command, CreateArgs,
    Failure, ImagesCommand, OpsCommand, Output,
};

type R = Result<(), Failure>;

/// Prints a value as JSON or YAML (as `out` says; a table format means JSON).
pub(crate) fn print_value(out: Output, v: &impl serde::Serialize) {
    if out == Output::Yaml {
        print!("{}", yaml_serde::to_string(v).expect("yaml"));
    } else {
        println!("{}", serde_json::to_string_pretty(v).expect("json"));
    }
}

fn dash(s: Option<String>) -> String {
    s.unwrap_or_else(|| "-".into())
}

/// Runs `f` on each named instance's id (an `i-` argument is tried as an id first,
/// then as a name; anything else is looked up by name). Errors are printed as they
/// come; the first one's exit code is the answer.
fn each<T>(
    c: &Client,
    names: &[String],
    mut f: impl FnMut(&str) -> Result<T, Error>,
) -> Result<Vec<(String, T)>, Failure> {
    let mut done = Vec::new();
    let mut failed = None;
    for n in names {
        let r = if n.starts_with("i-") {
            match f(n) {
                Err(e) if e.status() == Some(404) && e.code() == Some("INSTANCE_NOT_FOUND") => {
                    c.get_instance_by_name(n).and_then(|i| f(&i.id))
                }
                other => other,
            }
        } else {
            c.get_instance_by_name(n).and_then(|i| f(&i.id))
        };
        match r {
            Ok(t) => done.push((n.clone(), t)),
            Err(e) => {
                let code = report(&e, c.has_token());
                failed.get_or_insert(code);
            }
        }
    }
    match failed {
        // None went through: nothing to show.
        Some(code) if done.is_empty() => Err(Failure::Printed(code)),
        // What succeeded is still shown; the exit code says one failed.
        Some(code) => {
            FAILED.with(|x| x.set(Some(code)));
            Ok(done)
        }
        None => Ok(done),
    }
}

thread_local! {
    /// The exit code of a target that failed while others went on.
    static FAILED: std::cell::Cell<Option<u8>> = const { std::cell::Cell::new(None) };
}

fn finish() -> R {
    match FAILED.with(|x| x.get()) {
        Some(code) => Err(Failure::Printed(code)),
        None => Ok(()),
    }
}

/// The backend a command works on: the one given, else the only enabled one.
fn default_backend(c: &Client, given: &Option<String>) -> Result<String, Failure> {
    if let Some(b) = given {
        return Ok(b.clone());
    }
    let enabled: Vec<String> = c
        .list_backends()?
        .into_iter()
        .filter(|b| b.enabled)
        .map(|b| b.name)
        .collect();
    match enabled.as_slice() {
        [one] => Ok(one.clone()),
        [] => Err(Failure::Usage("the server has no enabled backend".into())),
        many => Err(Failure::Usage(format!(
            "choose a backend with --backend ({})",
            many.join(", ")
        ))),
    }
}

pub fn run(cli: &Cli, c: &Client) -> R {
    let out = cli.output;
    let q = cli.quiet;
    match &cli.command {
        Command::Ls(a) => {
            let filter = InstanceFilter {
                backend: a.backend.clone(),
                state: a.state.clone(),
                labels: a.label.clone(),
            };
            let mut list = c.list_all_instances(&filter)?;
            if !a.all && a.state.is_none() {
                list.retain(|i| matches!(i.state.as_str(), "running" | "paused" | "restarting"));
            }
            if q {
                list.iter().for_each(|i| println!("{}", i.id));
            } else if out.structured() {
                print_value(out, &list);
            } else {
                print!("{}", instance_table(&list));
            }
            Ok(())
        }
        Command::Get(a) => {
            let found = each(c, &a.names, |id| c.get_instance(id))?;
            let list: Vec<Instance> = found.into_iter().map(|(_, i)| i).collect();
            if q {
                list.iter().for_each(|i| println!("{}", i.id));
            } else if out.structured() {
                match list.as_slice() {
                    [one] if a.names.len() == 1 => print_value(out, one),
                    _ => print_value(out, &list),
                }
            } else {
                let blocks: Vec<String> = list.iter().map(describe).collect();
                print!("{}", blocks.join("\n"));
            }
            finish()
        }
        Command::Create(a) => create(c, a, out, q),
        Command::Start(a) => act(c, &a.names, Action::Start, None, out),
        Command::Pause(a) => act(c, &a.names, Action::Pause, None, out),
        Command::Unpause(a) => act(c, &a.names, Action::Unpause, None, out),
        Command::Stop(a) | Command::Restart(a) => {
            let action = if matches!(cli.command, Command::Stop(_)) {
                Action::Stop
            } else {
                Action::Restart
            };
            let opts = StopOptions {
                force: a.force,
                timeout: a.timeout,
            };
            act(c, &a.names, action, Some(&opts), out)
        }
        Command::Rm(a) => {
            let done = each(c, &a.names, |id| c.delete_instance(id, a.force, false))?;
            for (n, _) in &done {
                println!("{n}");
            }
            finish()
        }
        Command::Update(a) => {
            let mut req = UpdateInstance::default();
            let mut res = Resources::default();
            if let Some(n) = a.cpus {
                res.cpu = Some(unicompute_client::Cpu { cores: Some(n) });
            }
            if let Some(m) = a.memory {
                res.memory = Some(unicompute_client::Memory {
                    limit: Some(m),
                    used: None,
                });
            }
            if let Some(d) = a.disk {
                res.storage = Some(unicompute_client::Storage {
                    total_space: Some(d),
                    enforced: None,
                });
            }
            if !res.is_empty() {
                req.resources = Some(res);
            }
            let labels = !a.label.is_empty() || !a.unlabel.is_empty();
            if req.resources.is_none() && !labels {
                return Err(Failure::Usage(
                    "nothing to change: give --cpus, --memory, --disk, --label or --unlabel".into(),
                ));
            }
            let done = each(c, std::slice::from_ref(&a.name), |id| {
                let mut req = req.clone();
                if labels {
                    // The server replaces the labels: start from the current ones.
                    let mut l = c.get_instance(id)?.metadata.labels;
                    for kv in &a.label {
                        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
                        l.insert(k.to_owned(), v.to_owned());
                    }
                    for k in &a.unlabel {
                        l.remove(k);
                    }
                    req.metadata = Some(Metadata { labels: l });
                }
                match c.update_instance(id, &req, false)? {
                    Answer::Done(i) => Ok(i),
                    Answer::Accepted(op) => wait_instance(c, &op),
                }
            })?;
            for (n, i) in &done {
                if out.structured() {
                    print_value(out, i);
                } else {
                    println!("{n}");
                }
            }
            finish()
        }
        Command::Usage(a) => usage(c, a, out),
        Command::Events(a) => events(c, a, out),
        Command::Logs(a) => crate::streams::logs(c, a),
        Command::Exec(a) => crate::streams::exec(c, a, out),
        Command::Console(a) => crate::streams::console(c, a),
        Command::Ops(o) => ops(c, o, out, q),
        Command::Backends(b) => backends(c, b, out, q),
        Command::Images(i) => images(c, i, out, q),
        // Answered in main, before any server is asked.
        Command::Completion { .. } | Command::Man { .. } | Command::Remote(_) => Ok(()),
        Command::Cluster(ClusterCommand::Status) => {
            let s = c.cluster_status()?;
            if out.structured() {
                print_value(out, &s);
                return Ok(());
            }
            println!("Health: {}   Instances: {}\n", s.health, s.total_instances);
            let rows: Vec<Vec<String>> = s
                .backends
                .iter()
                .map(|(n, b)| {
                    vec![
                        n.clone(),
                        b.status.clone(),
                        b.instances.to_string(),
                        format!("{}/{}", b.resources.cpu.used, b.resources.cpu.total),
                        format!(
                            "{}/{}",
                            size(b.resources.memory.used),
                            size(b.resources.memory.total)
                        ),
                    ]
                })
                .collect();
            print!(
                "{}",
                table(
                    &["BACKEND", "STATUS", "INSTANCES", "CPUS", "MEMORY"],
                    &rows,
                    &|i, s| if i == 1 { state_colour(s) } else { None }
                )
            );
            Ok(())
        }
    }
}

fn wait_instance(c: &Client, op: &Operation) -> Result<Instance, Error> {
    op_instance(c.wait_operation(&op.id, None)?)
}

/// The instance an ended operation answers, or its error.
fn op_instance(op: Operation) -> Result<Instance, Error> {
    if let Some(e) = operation_error(&op) {
        return Err(e);
    }
    op.instance().ok_or_else(|| Error::Protocol {
        status: 200,
        message: format!("operation {} ended without an instance", op.id),
    })
}

fn act(c: &Client, names: &[String], action: Action, stop: Option<&StopOptions>, out: Output) -> R {
    let done = each(c, names, |id| match c.action(id, action, stop, false)? {
        Answer::Done(i) => Ok(i),
        Answer::Accepted(op) => wait_instance(c, &op),
    })?;
    if out.structured() {
        print_value(out, &done.iter().map(|(_, i)| i).collect::<Vec<_>>());
    } else {
        for (n, _) in &done {
            println!("{n}");
        }
    }
    finish()
}

fn instance_table(list: &[Instance]) -> String {
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|i| {
            vec![
                i.id.clone(),
                i.name.clone(),
                i.backend.clone(),
                i.instance_type.clone(),
                i.state.clone(),
                dash(i.image().map(str::to_owned)),
                dash(
                    i.resources
                        .cpu
                        .as_ref()
                        .and_then(|c| c.cores)
                        .map(|n| n.to_string()),
                ),
                dash(i.resources.memory.as_ref().and_then(|m| m.limit).map(size)),
                ago(i.created_at),
            ]
        })
        .collect();
    table(
        &[
            "ID", "NAME", "BACKEND", "TYPE", "STATE", "IMAGE", "CPUS", "MEMORY", "CREATED",
        ],
        &rows,
        &|i, s| if i == 4 { state_colour(s) } else { None },
    )
}

fn describe(i: &Instance) -> String {
    let r = &i.resources;
    let labels: Vec<String> = i
        .metadata
        .labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    let mut rows = vec![
        ("ID", i.id.clone()),
        ("Name", i.name.clone()),
        ("UUID", i.uuid.clone()),
        ("Backend", format!("{} ({})", i.backend, i.instance_type)),
        ("State", i.state.clone()),
        ("Health", i.status.clone()),
        ("Image", dash(i.image().map(str::to_owned))),
        (
            "CPUs",
            dash(r.cpu.as_ref().and_then(|c| c.cores).map(|n| n.to_string())),
        ),
        (
            "Memory",
            dash(r.memory.as_ref().and_then(|m| m.limit).map(size)),
        ),
        (
            "Disk",
            dash(r.storage.as_ref().and_then(|s| s.total_space).map(|n| {
                let enforced = r.storage.as_ref().and_then(|s| s.enforced) == Some(false);
                format!(
                    "{}{}",
                    size(n),
                    if enforced { " (not enforced)" } else { "" }
                )
            })),
        ),
        (
            "Labels",
            if labels.is_empty() {
                "-".into()
            } else {
                labels.join(", ")
            },
        ),
        (
            "Created",
            format!(
                "{} ({})",
                i.created_at
                    .to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
                ago(i.created_at)
            ),
        ),
        (
            "Updated",
            format!(
                "{} ({})",
                i.updated_at
                    .to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
                ago(i.updated_at)
            ),
        ),
    ];
    if let Some(p) = &i.pending_resources {
        rows.push(("Pending", serde_json::to_string(p).unwrap_or_default()));
    }
    rows.push(("Config", Value::Object(i.config.clone()).to_string()));
    rows.iter()
        .map(|(k, v)| format!("{:<9}{v}\n", format!("{k}:")))
        .collect()
}

fn create(c: &Client, a: &CreateArgs, out: Output, q: bool) -> R {
    let mut body: Map<String, Value> = match &a.file {
        Some(f) => {
            let text = if f.as_os_str() == "-" {
                let mut s = String::new();
                std::io::stdin()
                    .read_to_string(&mut s)
                    .map_err(|e| Failure::Usage(format!("reading standard input: {e}")))?;
                s
            } else {
                std::fs::read_to_string(f)
                    .map_err(|e| Failure::Usage(format!("cannot read {}: {e}", f.display())))?
            };
            // JSON when it looks like JSON (its errors are the clearer), else YAML.
            let json =
                text.trim_start().starts_with('{') || f.extension().is_some_and(|e| e == "json");
            let parsed = if json {
                serde_json::from_str(&text).map_err(|e| format!("not JSON: {e}"))
            } else {
                yaml_serde::from_str(&text).map_err(|e| format!("not YAML (nor JSON): {e}"))
            };
            match parsed {
                Ok(Value::Object(m)) => m,
                Ok(_) => {
                    return Err(Failure::Usage(format!(
                        "{}: not an object (a JSON or YAML mapping)",
                        f.display()
                    )))
                }
                Err(e) => return Err(Failure::Usage(format!("{}: {e}", f.display()))),
            }
        }
        None => Map::new(),
    };
    if let Some(n) = a.name.as_ref().or(a.name_arg.as_ref()) {
        body.insert("name".into(), json!(n));
    }
    if !body.contains_key("name") {
        return Err(Failure::Usage(
            "a name is needed: uc create NAME (or --name)".into(),
        ));
    }
    if a.backend.is_some() || !body.contains_key("backend") {
        body.insert("backend".into(), json!(default_backend(c, &a.backend)?));
    }
    fn obj<'m>(m: &'m mut Map<String, Value>, k: &str) -> &'m mut Map<String, Value> {
        let v = m.entry(k.to_owned()).or_insert_with(|| json!({}));
        if !v.is_object() {
            *v = json!({});
        }
        v.as_object_mut().expect("an object")
    }
    let config = obj(&mut body, "config");
    if let Some(i) = &a.image {
        config.insert("image".into(), json!(i));
    }
    for (k, v) in [
        ("ports", &a.publish),
        ("env", &a.env),
        ("volumes", &a.volume),
        ("command", &a.command),
    ] {
        if !v.is_empty() {
            config.insert(k.into(), json!(v));
        }
    }
    if let Some(f) = &a.cloud_init {
        let data = std::fs::read_to_string(f)
            .map_err(|e| Failure::Usage(format!("cannot read {}: {e}", f.display())))?;
        obj(config, "cloudInit").insert("userData".into(), json!(data));
    }
    if body
        .get("config")
        .is_some_and(|c| c.as_object().is_some_and(Map::is_empty))
    {
        body.remove("config");
    }
    if a.cpus.is_some() || a.memory.is_some() || a.disk.is_some() {
        let res = obj(&mut body, "resources");
        if let Some(n) = a.cpus {
            res.insert("cpu".into(), json!({"cores": n}));
        }
        if let Some(m) = a.memory {
            res.insert("memory".into(), json!({"limit": m}));
        }
        if let Some(d) = a.disk {
            res.insert("storage".into(), json!({"totalSpace": d}));
        }
    }
    if !a.label.is_empty() {
        let labels = obj(obj(&mut body, "metadata"), "labels");
        for kv in &a.label {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            labels.insert(k.to_owned(), json!(v));
        }
    }
    if a.start {
        body.insert("start".into(), json!(true));
    }
    // As an operation: a long create (a raw disk copy) draws its progress on a
    // terminal, and Ctrl-C offers to cancel it.
    let backend = body["backend"].as_str().unwrap_or_default().to_owned();
    let name = body["name"].as_str().unwrap_or_default().to_owned();
    let mut drawer = Drawer::new(Show::Nothing.or_if(!q && !out.structured(), Show::Bar), "");
    let stream = progress::subscribe(c, &backend, &drawer);
    let i = match c.create_instance_raw(&Value::Object(body), true)? {
        Answer::Done(i) => i,
        Answer::Accepted(op) => {
            drawer.set_label(&op.id);
            let what = format!("the create of {name}");
            op_instance(progress::follow(c, &op, &what, stream, &mut drawer)?)?
        }
    };
    if out.structured() && !q {
        print_value(out, &i);
    } else {
        println!("{}", i.id);
    }
    Ok(())
}

fn usage(c: &Client, a: &crate::UsageArgs, out: Output) -> R {
    if a.watch {
        exit_on_sigint(None);
    }
    let tty = std::io::stdout().is_terminal();
    loop {
        let targets: Vec<Instance> = if a.names.is_empty() {
            c.list_all_instances(&InstanceFilter {
                state: Some("running".into()),
                ..Default::default()
            })?
        } else {
            each(c, &a.names, |id| c.get_instance(id))?
                .into_iter()
                .map(|(_, i)| i)
                .collect()
        };
        let mut rows = Vec::new();
        let mut all = Vec::new();
        for i in &targets {
            match c.usage(&i.id) {
                Ok(u) => {
                    rows.push(vec![
                        i.id.clone(),
                        i.name.clone(),
                        format!("{:.2}%", u.cpu.usage),
                        format!("{} / {}", size(u.memory.used), size(u.memory.limit)),
                        format!("{:.2}%", u.memory.percentage),
                        format!("{} / {}", size(u.storage.used), size(u.storage.total)),
                        format!(
                            "{} / {}",
                            size(u.network.rx_bytes),
                            size(u.network.tx_bytes)
                        ),
                    ]);
                    all.push(json!({"id": i.id, "name": i.name, "usage": u}));
                }
                // One that went away meanwhile is left out; in a one-shot run with
                // names the error is the answer.
                Err(e) if a.watch || a.names.is_empty() => {
                    if !e.is_not_found() {
                        report(&e, c.has_token());
                    }
                }
                Err(e) => return Err(e.into()),
            }
        }
        if out == Output::Yaml {
            print!("---\n{}", yaml_serde::to_string(&all).expect("yaml"));
        } else if out.structured() {
            println!("{}", Value::Array(all));
        } else {
            if a.watch && tty {
                print!("\x1b[H\x1b[2J");
            }
            print!(
                "{}",
                table(
                    &[
                        "ID",
                        "NAME",
                        "CPU %",
                        "MEM USAGE / LIMIT",
                        "MEM %",
                        "DISK USED / TOTAL",
                        "NET RX / TX"
                    ],
                    &rows,
                    &|_, _| None
                )
            );
        }
        let _ = std::io::stdout().flush();
        if !a.watch {
            return finish();
        }
        std::thread::sleep(Duration::from_secs(a.interval.max(1)));
    }
}

fn event_line(e: &unicompute_client::Event) -> String {
    let who = match (&e.instance, &e.instance_id) {
        (Some(i), _) => format!("{} ({})", i.id, i.name),
        (None, Some(id)) => id.clone(),
        (None, None) => String::new(),
    };
    let mut detail = Vec::new();
    if let (Some(f), Some(t)) = (&e.from, &e.to) {
        detail.push(format!("{f} -> {t}"));
    }
    if let Some(op) = &e.operation {
        let mut s = format!("{} {} {}", op.id, op.kind, op.status);
        if let Some(p) = &op.progress {
            s.push_str(&format!(" {}", progress::text(p)));
        }
        detail.push(s);
    }
    if let Some(p) = &e.plugin {
        detail.push(
            p.get("file")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned(),
        );
    }
    if let Some(r) = &e.reason {
        detail.push(format!("reason={r}"));
    }
    let parts = [
        e.time.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        e.event_type.clone(),
        e.backend.clone().unwrap_or_else(|| "-".into()),
        who,
        detail.join(" "),
    ];
    parts
        .iter()
        .filter(|p| !p.is_empty())
        .cloned()
        .collect::<Vec<_>>()
        .join(" ")
}

fn events(c: &Client, a: &crate::EventsArgs, out: Output) -> R {
    let mut instances = Vec::new();
    for n in &a.instance {
        instances.push(if n.starts_with("i-") {
            n.clone()
        } else {
            c.resolve(n)?.id
        });
    }
    let filter = EventFilter {
        backends: a.backend.clone(),
        instances,
        types: a.types.clone(),
    };
    let stream = c.events(&filter, a.since)?;
    exit_on_sigint(None);
    let stdout = std::io::stdout();
    for e in stream {
        let e = e?;
        let line = if out == Output::Yaml {
            format!(
                "---\n{}",
                yaml_serde::to_string(&e.raw).expect("yaml").trim_end()
            )
        } else if out.structured() {
            e.raw.to_string()
        } else {
            event_line(&e)
        };
        let mut lock = stdout.lock();
        let _ = writeln!(lock, "{line}");
        let _ = lock.flush();
    }
    Err(Error::Connect {
        url: c.url().to_owned(),
        message: "the server ended the event stream".into(),
    }
    .into())
}

fn op_rows(list: &[Operation]) -> String {
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|o| {
            vec![
                o.id.clone(),
                o.kind.clone(),
                o.status.clone(),
                dash(o.instance_id.clone()),
                dash(o.backend.clone()),
                dash(o.progress.as_ref().map(progress::text)),
                ago(o.created_at),
            ]
        })
        .collect();
    table(
        &[
            "ID", "KIND", "STATUS", "INSTANCE", "BACKEND", "PROGRESS", "CREATED",
        ],
        &rows,
        &|i, s| if i == 2 { state_colour(s) } else { None },
    )
}

fn ops(c: &Client, o: &OpsCommand, out: Output, q: bool) -> R {
    let show = |list: &[Operation]| {
        if q {
            list.iter().for_each(|o| println!("{}", o.id));
        } else if out.structured() {
            print_value(out, &list);
        } else {
            print!("{}", op_rows(list));
        }
    };
    match o {
        OpsCommand::Ls {
            status,
            kind,
            instance,
            backend,
        } => {
            let instance = match instance {
                Some(n) if !n.starts_with("i-") => Some(c.resolve(n)?.id),
                other => other.clone(),
            };
            let f = OperationFilter {
                status: status.clone(),
                kind: kind.clone(),
                instance,
                backend: backend.clone(),
            };
            let mut all = Vec::new();
            let mut page = 1;
            loop {
                let l = c.list_operations(&f, page, 100)?;
                let n = l.operations.len();
                all.extend(l.operations);
                if n == 0 || all.len() as u64 >= l.total {
                    break;
                }
                page += 1;
            }
            show(&all);
            Ok(())
        }
        OpsCommand::Get { ids } | OpsCommand::Cancel { ids } => {
            let cancel = matches!(o, OpsCommand::Cancel { .. });
            let mut list = Vec::new();
            let mut failed = None;
            for id in ids {
                match if cancel {
                    c.cancel_operation(id)
                } else {
                    c.get_operation(id, None)
                } {
                    Ok(op) => list.push(op),
                    Err(e) => {
                        failed.get_or_insert(report(&e, c.has_token()));
                    }
                }
            }
            if out.structured() && ids.len() == 1 && list.len() == 1 {
                print_value(out, &list[0]);
            } else {
                show(&list);
            }
            failed.map_or(Ok(()), |code| Err(Failure::Printed(code)))
        }
        OpsCommand::Wait { timeout, ids } => {
            exit_on_sigint(None);
            let mut failed = None;
            let mut list = Vec::new();
            for id in ids {
                match c.wait_operation(id, timeout.map(Duration::from_secs)) {
                    Ok(op) => {
                        if !op.ended() {
                            eprintln!(
                                "Error: operation {id} is still {} after the timeout",
                                op.status
                            );
                            failed.get_or_insert(exit::OTHER);
                        } else if let Some(e) = operation_error(&op) {
                            failed.get_or_insert(report(&e, true));
                        }
                        list.push(op);
                    }
                    Err(e) => {
                        failed.get_or_insert(report(&e, c.has_token()));
                    }
                }
            }
            show(&list);
            failed.map_or(Ok(()), |code| Err(Failure::Printed(code)))
        }
    }
}

fn backends(c: &Client, b: &BackendsCommand, out: Output, q: bool) -> R {
    match b {
        BackendsCommand::Ls => {
            let list = c.list_backends()?;
            if q {
                list.iter().for_each(|b| println!("{}", b.name));
            } else if out.structured() {
                print_value(out, &list);
            } else {
                let rows: Vec<Vec<String>> = list
                    .iter()
                    .map(|b| {
                        vec![
                            b.name.clone(),
                            b.plugin.clone(),
                            dash(b.backend_type.clone()),
                            b.status.clone(),
                            b.instances.to_string(),
                            dash(b.reason.clone()),
                        ]
                    })
                    .collect();
                print!(
                    "{}",
                    table(
                        &["NAME", "PLUGIN", "TYPE", "STATUS", "INSTANCES", "REASON"],
                        &rows,
                        &|i, s| if i == 3 { state_colour(s) } else { None }
                    )
                );
            }
            Ok(())
        }
        BackendsCommand::Info { name } => {
            let i = c.backend_info(name)?;
            if out.structured() {
                print_value(out, &i);
                return Ok(());
            }
            let mut rows = vec![
                ("Name", i.name.clone()),
                ("Type", i.backend_type.clone()),
                ("Status", i.status.clone()),
                ("Version", i.version.clone()),
                ("API", i.api_version.clone()),
                ("Types", i.supported_types.join(", ")),
                ("Capabilities", i.capabilities.join(", ")),
                (
                    "Health",
                    format!(
                        "{}{}",
                        i.health_check
                            .get("status")
                            .and_then(Value::as_str)
                            .unwrap_or("-"),
                        i.health_check
                            .get("reason")
                            .and_then(Value::as_str)
                            .map(|r| format!(" ({r})"))
                            .unwrap_or_default()
                    ),
                ),
            ];
            if let Some(p) = &i.plugin {
                rows.push((
                    "Plugin",
                    format!(
                        "{} {} (interface {}, {})",
                        p.name, p.version, p.interface_version, p.file
                    ),
                ));
            }
            if !i.extra.is_empty() {
                rows.push(("Extra", Value::Object(i.extra.clone()).to_string()));
            }
            for (k, v) in rows {
                println!("{:<14}{v}", format!("{k}:"));
            }
            Ok(())
        }
    }
}

fn images(c: &Client, i: &ImagesCommand, out: Output, q: bool) -> R {
    match i {
        ImagesCommand::Ls { backend } => {
            let names: Vec<String> = match backend {
                Some(b) => vec![b.clone()],
                None => c
                    .list_backends()?
                    .into_iter()
                    .filter(|b| b.enabled && b.status == "healthy")
                    .map(|b| b.name)
                    .collect(),
            };
            let mut all: BTreeMap<String, Vec<unicompute_client::Image>> = BTreeMap::new();
            for b in names {
                all.insert(b.clone(), c.list_images(&b)?);
            }
            if q {
                all.values().flatten().for_each(|i| println!("{}", i.name));
            } else if out.structured() {
                let v: Vec<Value> = all
                    .iter()
                    .map(|(b, l)| json!({"backend": b, "images": l}))
                    .collect();
                print_value(out, &v);
            } else {
                let rows: Vec<Vec<String>> = all
                    .iter()
                    .flat_map(|(b, l)| {
                        l.iter().map(move |i| {
                            vec![
                                b.clone(),
                                i.name.clone(),
                                dash(i.id.as_ref().map(|id| {
                                    id.trim_start_matches("sha256:").chars().take(12).collect()
                                })),
                                dash(i.format.clone()),
                                dash(i.size.map(size)),
                                dash(i.created_at.map(ago)),
                            ]
                        })
                    })
                    .collect();
                print!(
                    "{}",
                    table(
                        &["BACKEND", "NAME", "ID", "FORMAT", "SIZE", "CREATED"],
                        &rows,
                        &|_, _| None
                    )
                );
            }
            Ok(())
        }
        ImagesCommand::Upload {
            backend,
            name,
            file,
        } => {
            let backend = default_backend(c, backend)?;
            upload(c, &backend, name.as_deref(), file, out, q)
        }
        ImagesCommand::Pull { backend, reference } => {
            let backend = default_backend(c, backend)?;
            pull(c, &backend, reference, out, q)
        }
        ImagesCommand::Rm { backend, names } => {
            let backend = default_backend(c, backend)?;
            let mut failed = None;
            for n in names {
                match c.delete_image(&backend, n, false) {
                    Ok(_) => println!("{n}"),
                    Err(e) => {
                        failed.get_or_insert(report(&e, c.has_token()));
                    }
                }
            }
            failed.map_or(Ok(()), |code| Err(Failure::Printed(code)))
        }
    }
}

/// A pull as an operation, its progress from the operation's events: a bar on a
/// terminal (stderr), plain lines otherwise; Ctrl-C offers to cancel it.
fn pull(c: &Client, backend: &str, reference: &str, out: Output, q: bool) -> R {
    let mut drawer = Drawer::new(
        Show::Nothing.or_if(!q && !out.structured(), Show::BarOrLines),
        "",
    );
    let stream = progress::subscribe(c, backend, &drawer);
    let op = match c.pull_image(
        backend,
        &PullImage {
            reference: reference.to_owned(),
            auth: None,
        },
        true,
    )? {
        Answer::Accepted(op) => op,
        Answer::Done(img) => {
            println!("{}", img.name);
            return Ok(());
        }
    };
    drawer.set_label(&op.id);
    let op = progress::follow(
        c,
        &op,
        &format!("the pull of {reference}"),
        stream,
        &mut drawer,
    )?;
    if let Some(e) = operation_error(&op) {
        return Err(Failure::Printed(report(&e, true)));
    }
    if out.structured() {
        print_value(out, &op.image);
    } else {
        let name = op.image.as_ref().map_or(reference, |i| i.name.as_str());
        println!("{name}");
    }
    Ok(())
}

/// An upload of a file as a template, its bytes drawn as they are sent. Ctrl-C
/// abandons it: the server keeps nothing of a body that ends early.
fn upload(
    c: &Client,
    backend: &str,
    name: Option<&str>,
    file: &std::path::Path,
    out: Output,
    q: bool,
) -> R {
    let name = match name {
        Some(n) => n.to_owned(),
        None => file
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .ok_or_else(|| {
                Failure::Usage(format!("{}: no file name; give --name", file.display()))
            })?,
    };
    let f = std::fs::File::open(file)
        .map_err(|e| Failure::Usage(format!("cannot read {}: {e}", file.display())))?;
    let meta = f
        .metadata()
        .map_err(|e| Failure::Usage(format!("cannot read {}: {e}", file.display())))?;
    if !meta.is_file() {
        return Err(Failure::Usage(format!("{} is not a file", file.display())));
    }
    let total = meta.len();
    exit_on_sigint(Some(format!(
        "\ninterrupted: the upload of {name} was abandoned; the server keeps nothing of it\n"
    )));
    let body = progress::Counting {
        inner: f,
        done: 0,
        total: Some(total),
        drawer: Drawer::new(
            Show::Nothing.or_if(!q && !out.structured(), Show::Bar),
            &name,
        ),
    };
    let r = c.upload_image(backend, &name, body, Some(total), false);
    if std::io::stderr().is_terminal() && !q && !out.structured() {
        eprintln!();
    }
    let img = match r? {
        Answer::Done(img) => img,
        Answer::Accepted(op) => {
            let op = c.wait_operation(&op.id, None)?;
            if let Some(e) = operation_error(&op) {
                return Err(e.into());
            }
            op.image.ok_or_else(|| Error::Protocol {
                status: 200,
                message: format!("operation {} ended without an image", op.id),
            })?
        }
    };
    if out.structured() {
        print_value(out, &img);
    } else {
        println!("{}", img.name);
    }
    Ok(())
}
