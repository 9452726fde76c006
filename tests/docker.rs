//! Checks `docker/compose-{3,5}.yml` without a Docker engine: every service is an independent
//! Redis master started with exactly the settings of the README's "Server settings that matter"
//! table, on its own host port and volume, and `docs/docker.md` shows the same node URLs.
//!
//! The compose files are read by a small YAML-subset parser (block mappings, block and flow
//! sequences of scalars, quoted and plain scalars, comments). It refuses whatever else YAML
//! allows (anchors, aliases, tags, multi-line strings, flow mappings, tabs, several documents),
//! so an edit it cannot read fails the test instead of slipping past it.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::Path;

/// A parsed YAML value of the subset the compose files use.
#[derive(Debug, Clone, PartialEq)]
enum Yaml {
    Null,
    Str(String),
    List(Vec<Yaml>),
    Map(Vec<(String, Yaml)>),
}

impl Yaml {
    fn get(&self, key: &str) -> Option<&Yaml> {
        match self {
            Yaml::Map(entries) => entries.iter().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }

    fn entries(&self) -> &[(String, Yaml)] {
        match self {
            Yaml::Map(entries) => entries,
            _ => &[],
        }
    }

    fn str(&self) -> Option<&str> {
        match self {
            Yaml::Str(s) => Some(s),
            _ => None,
        }
    }

    /// A list of strings (a single string counts as a one-element list: `ports: "x"` is not
    /// compose syntax, but then the checks below report it clearly).
    fn strings(&self) -> Vec<String> {
        match self {
            Yaml::List(items) => items
                .iter()
                .map(|i| {
                    i.str()
                        .map(str::to_owned)
                        .unwrap_or_else(|| format!("{i:?}"))
                })
                .collect(),
            Yaml::Str(s) => vec![s.clone()],
            _ => Vec::new(),
        }
    }

    /// Every scalar anywhere below this value, keys included.
    fn scalars(&self, out: &mut Vec<String>) {
        match self {
            Yaml::Null => {}
            Yaml::Str(s) => out.push(s.clone()),
            Yaml::List(items) => items.iter().for_each(|i| i.scalars(out)),
            Yaml::Map(entries) => {
                for (k, v) in entries {
                    out.push(k.clone());
                    v.scalars(out);
                }
            }
        }
    }
}

struct Line {
    number: usize,
    indent: usize,
    text: String,
}

fn parse_yaml(src: &str) -> Result<Yaml, String> {
    let mut lines = Vec::new();
    for (i, raw) in src.lines().enumerate() {
        let number = i + 1;
        let body = raw.trim_start_matches(' ');
        if body.starts_with('\t') {
            return Err(format!("line {number}: tab in indentation"));
        }
        let text = strip_comment(body).trim_end();
        if text.is_empty() {
            continue;
        }
        if text == "---" || text == "..." || text.starts_with("%") {
            return Err(format!(
                "line {number}: document markers and directives are not supported"
            ));
        }
        lines.push(Line {
            number,
            indent: raw.len() - body.len(),
            text: text.to_owned(),
        });
    }
    let Some(first) = lines.first() else {
        return Ok(Yaml::Null);
    };
    if first.indent != 0 {
        return Err(format!(
            "line {}: the document must start at column 0",
            first.number
        ));
    }
    let mut pos = 0;
    let doc = parse_block(&lines, &mut pos, 0)?;
    match lines.get(pos) {
        Some(line) => Err(format!("line {}: unexpected indentation", line.number)),
        None => Ok(doc),
    }
}

/// Drops a `#` comment that starts the line or follows whitespace, outside quotes.
fn strip_comment(text: &str) -> &str {
    let mut quote = None;
    let mut prev = ' ';
    for (i, c) in text.char_indices() {
        match (quote, c) {
            (None, '#') if prev == ' ' => return &text[..i],
            (None, '"' | '\'') => quote = Some(c),
            (Some(q), _) if c == q => quote = None,
            _ => {}
        }
        prev = c;
    }
    text
}

fn is_item(text: &str) -> bool {
    text == "-" || text.starts_with("- ")
}

/// The block (mapping or sequence) whose lines start at `lines[*pos]`, all at `indent`.
fn parse_block(lines: &[Line], pos: &mut usize, indent: usize) -> Result<Yaml, String> {
    if is_item(&lines[*pos].text) {
        let mut items = Vec::new();
        // Ends at a line that is not an item: a sibling key when the sequence sits at its key's
        // indentation, an error (reported by the caller) otherwise.
        while let Some(line) = lines
            .get(*pos)
            .filter(|l| l.indent == indent && is_item(&l.text))
        {
            let item = line.text[1..].trim();
            if item.is_empty() || find_key(item).is_some() {
                return Err(format!(
                    "line {}: only scalars are supported as sequence items",
                    line.number
                ));
            }
            items.push(parse_scalar(item).map_err(|e| format!("line {}: {e}", line.number))?);
            *pos += 1;
        }
        return Ok(Yaml::List(items));
    }
    let mut entries: Vec<(String, Yaml)> = Vec::new();
    while let Some(line) = lines.get(*pos).filter(|l| l.indent == indent) {
        let number = line.number;
        let (key, rest) =
            find_key(&line.text).ok_or_else(|| format!("line {number}: expected `key: value`"))?;
        let key = match parse_scalar(key).map_err(|e| format!("line {number}: {e}"))? {
            Yaml::Str(k) if k != "<<" => k,
            _ => return Err(format!("line {number}: unsupported key {key:?}")),
        };
        if entries.iter().any(|(k, _)| *k == key) {
            return Err(format!("line {number}: duplicate key {key:?}"));
        }
        *pos += 1;
        let value = if !rest.is_empty() {
            parse_scalar(rest).map_err(|e| format!("line {number}: {e}"))?
        } else {
            match lines.get(*pos) {
                Some(next) if next.indent > indent => parse_block(lines, pos, next.indent)?,
                // A sequence may sit at its key's own indentation.
                Some(next) if next.indent == indent && is_item(&next.text) => {
                    parse_block(lines, pos, indent)?
                }
                _ => Yaml::Null,
            }
        };
        entries.push((key, value));
    }
    match lines.get(*pos) {
        Some(line) if line.indent > indent => {
            Err(format!("line {}: unexpected indentation", line.number))
        }
        _ => Ok(Yaml::Map(entries)),
    }
}

/// Splits `key: value` at the first `:` that is followed by a space or ends the line, outside
/// quotes and brackets.
fn find_key(text: &str) -> Option<(&str, &str)> {
    let mut quote = None;
    let mut depth = 0usize;
    let bytes = text.as_bytes();
    for (i, c) in text.char_indices() {
        match (quote, c) {
            (None, '"' | '\'') => quote = Some(c),
            (Some(q), _) if c == q => quote = None,
            (None, '[' | '{') => depth += 1,
            (None, ']' | '}') => depth = depth.saturating_sub(1),
            (None, ':') if depth == 0 && matches!(bytes.get(i + 1), None | Some(b' ')) => {
                return Some((text[..i].trim(), text[i + 1..].trim()));
            }
            _ => {}
        }
    }
    None
}

fn parse_scalar(text: &str) -> Result<Yaml, String> {
    let text = text.trim();
    if let Some(inner) = text.strip_prefix('[') {
        let inner = inner
            .strip_suffix(']')
            .ok_or_else(|| format!("unterminated flow sequence {text:?}"))?;
        if inner.trim().is_empty() {
            return Ok(Yaml::List(Vec::new()));
        }
        return split_flow(inner)?
            .into_iter()
            .map(|item| match parse_scalar(item)? {
                Yaml::List(_) | Yaml::Map(_) => Err(format!("nested collection in {text:?}")),
                scalar => Ok(scalar),
            })
            .collect::<Result<_, _>>()
            .map(Yaml::List);
    }
    if text == "{}" {
        return Ok(Yaml::Map(Vec::new()));
    }
    if let Some(inner) = text.strip_prefix('"') {
        let inner = inner
            .strip_suffix('"')
            .ok_or_else(|| format!("unterminated string {text:?}"))?;
        let mut out = String::new();
        let mut chars = inner.chars();
        while let Some(c) = chars.next() {
            match c {
                '\\' => match chars.next() {
                    Some(e @ ('"' | '\\' | '/')) => out.push(e),
                    Some('n') => out.push('\n'),
                    Some('t') => out.push('\t'),
                    other => return Err(format!("unsupported escape \\{other:?} in {text:?}")),
                },
                '"' => return Err(format!("stray quote in {text:?}")),
                c => out.push(c),
            }
        }
        return Ok(Yaml::Str(out));
    }
    if let Some(inner) = text.strip_prefix('\'') {
        let inner = inner
            .strip_suffix('\'')
            .ok_or_else(|| format!("unterminated string {text:?}"))?;
        return Ok(Yaml::Str(inner.replace("''", "'")));
    }
    if text.starts_with(['&', '*', '!', '|', '>', '{', '@', '`', '%', '?']) {
        return Err(format!(
            "unsupported YAML (anchor, alias, tag, block scalar or flow mapping): {text:?}"
        ));
    }
    match text {
        "" | "~" | "null" => Ok(Yaml::Null),
        _ => Ok(Yaml::Str(text.to_owned())),
    }
}

/// Splits the inside of a flow sequence at commas outside quotes.
fn split_flow(inner: &str) -> Result<Vec<&str>, String> {
    let mut items = Vec::new();
    let mut quote = None;
    let mut start = 0;
    for (i, c) in inner.char_indices() {
        match (quote, c) {
            (None, '"' | '\'') => quote = Some(c),
            (Some(q), _) if c == q => quote = None,
            (None, '[' | ']' | '{' | '}') => {
                return Err(format!("nested collection in [{inner}]"));
            }
            (None, ',') => {
                items.push(inner[start..i].trim());
                start = i + 1;
            }
            _ => {}
        }
    }
    if quote.is_some() {
        return Err(format!("unterminated string in [{inner}]"));
    }
    items.push(inner[start..].trim());
    Ok(items)
}

fn read(path: &str) -> String {
    let full = Path::new(env!("CARGO_MANIFEST_DIR")).join(path);
    fs::read_to_string(&full).unwrap_or_else(|e| panic!("reading {}: {e}", full.display()))
}

/// The README's "Server settings that matter" table: `setting -> value` for every row whose
/// cells name settings and values in backticks (`appendonly` / `appendfsync` | `yes` / `always`),
/// and whether it says replication: none.
fn readme_settings() -> (BTreeMap<String, String>, bool) {
    let readme = read("README.md");
    let start = readme
        .find("## Server settings that matter")
        .expect("README has a \"Server settings that matter\" section");
    let section = &readme[start..];
    let section = &section[..section[3..].find("\n## ").map_or(section.len(), |i| i + 3)];
    let backticked = |cell: &str| -> Vec<String> {
        cell.split('`')
            .skip(1)
            .step_by(2)
            .map(str::to_owned)
            .collect()
    };
    let mut settings = BTreeMap::new();
    let mut no_replication = false;
    for row in section.lines().filter(|l| l.starts_with('|')) {
        let cells: Vec<&str> = row.split('|').map(str::trim).collect();
        let (name, value) = (cells[1], cells[2]);
        if name == "replication" {
            no_replication = value == "none";
        }
        let (names, values) = (backticked(name), backticked(value));
        if names.is_empty() || values.is_empty() {
            continue; // header, separator, or a row with no fixed value ("as you like")
        }
        assert_eq!(
            names.len(),
            values.len(),
            "README row {row:?}: names and values differ in number"
        );
        settings.extend(names.into_iter().zip(values));
    }
    (settings, no_replication)
}

/// What a compose file promises, after every check passed.
#[derive(Debug)]
struct Masters {
    urls: Vec<String>,
}

/// Checks `docker/compose-<n>.yml` against the README's settings and returns its node URLs.
fn check_compose(n: usize) -> Masters {
    let path = format!("docker/compose-{n}.yml");
    let src = read(&path);
    let doc = parse_yaml(&src).unwrap_or_else(|e| panic!("{path}: {e}"));
    let (expected, no_replication) = readme_settings();
    for setting in ["appendonly", "appendfsync", "maxmemory-policy"] {
        assert!(
            expected.contains_key(setting),
            "README's server-settings table lost `{setting}` (read: {expected:?})"
        );
    }
    assert!(
        no_replication,
        "README's server-settings table should say replication: none"
    );

    for (key, _) in doc.entries() {
        assert!(
            ["name", "services", "volumes"].contains(&key.as_str()),
            "{path}: unexpected top-level key {key:?}"
        );
    }
    let services = doc
        .get("services")
        .unwrap_or_else(|| panic!("{path}: no services"));
    assert_eq!(services.entries().len(), n, "{path}: expected {n} services");
    let declared: BTreeSet<&str> = doc
        .get("volumes")
        .map(|v| v.entries().iter().map(|(k, _)| k.as_str()).collect())
        .unwrap_or_default();

    let mut ports = Vec::new();
    let mut volumes = BTreeSet::new();
    for (name, service) in services.entries() {
        let at = format!("{path}: service {name}");
        let mut scalars = Vec::new();
        service.scalars(&mut scalars);
        for s in &scalars {
            let lower = s.to_ascii_lowercase();
            for banned in ["replicaof", "slaveof", "sentinel", "cluster-enabled"] {
                assert!(
                    !lower.contains(banned),
                    "{at}: {banned:?} in {s:?}: masters must be independent"
                );
            }
        }
        for banned in ["deploy", "scale", "entrypoint", "network_mode", "env_file"] {
            assert!(
                service.get(banned).is_none(),
                "{at}: `{banned}` is not expected here"
            );
        }
        let image = service.get("image").and_then(Yaml::str).unwrap_or_default();
        assert!(
            image.starts_with("redis:") && !image.ends_with(":latest"),
            "{at}: image {image:?} should be a pinned redis tag"
        );

        // command: redis-server --name value ..., exactly the README's settings.
        let command = service
            .get("command")
            .map(Yaml::strings)
            .unwrap_or_default();
        assert_eq!(
            command.first().map(String::as_str),
            Some("redis-server"),
            "{at}: command"
        );
        let mut flags = BTreeMap::new();
        let mut args = command[1..].iter();
        while let Some(flag) = args.next() {
            let setting = flag.strip_prefix("--").unwrap_or_else(|| {
                panic!("{at}: argument {flag:?} is not a --setting (no config files)")
            });
            let value = args
                .next()
                .unwrap_or_else(|| panic!("{at}: --{setting} has no value"));
            let old = flags.insert(setting.to_owned(), value.clone());
            assert!(old.is_none(), "{at}: --{setting} given twice");
        }
        assert_eq!(
            flags, expected,
            "{at}: redis-server settings differ from the README's table"
        );

        // ports: one, on loopback, to Redis' 6379.
        let mapped = service.get("ports").map(Yaml::strings).unwrap_or_default();
        assert_eq!(
            mapped.len(),
            1,
            "{at}: expected one port mapping, got {mapped:?}"
        );
        let spec = mapped[0].strip_suffix("/tcp").unwrap_or(&mapped[0]);
        let host_port = spec
            .strip_prefix("127.0.0.1:")
            .and_then(|rest| rest.strip_suffix(":6379"))
            .and_then(|p| p.parse::<u16>().ok())
            .unwrap_or_else(|| panic!("{at}: port {spec:?} should be 127.0.0.1:<port>:6379"));
        ports.push(host_port);

        // volumes: one named volume on /data, declared at the top and used by nobody else.
        let mounts = service
            .get("volumes")
            .map(Yaml::strings)
            .unwrap_or_default();
        assert_eq!(mounts.len(), 1, "{at}: expected one volume, got {mounts:?}");
        let volume = mounts[0]
            .strip_suffix(":/data")
            .unwrap_or_else(|| panic!("{at}: volume {:?} should be mounted on /data", mounts[0]));
        assert!(
            declared.contains(volume),
            "{at}: {volume:?} should be a named volume declared under top-level `volumes`"
        );
        assert!(
            volumes.insert(volume.to_owned()),
            "{at}: volume {volume:?} is shared"
        );
    }
    assert_eq!(
        volumes.iter().map(String::as_str).collect::<BTreeSet<_>>(),
        declared,
        "{path}: every declared volume should belong to exactly one master"
    );
    let distinct: BTreeSet<u16> = ports.iter().copied().collect();
    assert_eq!(
        distinct.len(),
        n,
        "{path}: host ports {ports:?} are not distinct"
    );
    let expected_ports: Vec<u16> = (7001..).take(n).collect();
    assert_eq!(
        ports, expected_ports,
        "{path}: host ports should be 7001.. in order"
    );

    let urls: Vec<String> = ports
        .iter()
        .map(|p| format!("redis://127.0.0.1:{p}"))
        .collect();
    // The header comment lists the same URLs.
    assert!(
        src.lines()
            .any(|l| l.trim_start_matches(['#', ' ']) == urls.join(",")),
        "{path}: the header comment should list {}",
        urls.join(",")
    );
    Masters { urls }
}

/// Every `REDQUORUM_NODES=` list in `docs/docker.md`.
fn documented_node_lists(doc: &str) -> Vec<Vec<String>> {
    doc.match_indices("REDQUORUM_NODES=")
        .map(|(i, m)| {
            let rest = &doc[i + m.len()..];
            let end = rest
                .find(|c: char| c.is_whitespace() || matches!(c, '`' | '\\' | '"' | '\''))
                .unwrap_or(rest.len());
            rest[..end].split(',').map(str::to_owned).collect()
        })
        .collect()
}

#[test]
fn compose_3_runs_three_independent_durable_masters() {
    assert_eq!(check_compose(3).urls.len(), 3);
}

#[test]
fn compose_5_runs_five_independent_durable_masters() {
    assert_eq!(check_compose(5).urls.len(), 5);
}

#[test]
fn docs_show_the_compose_files_node_urls() {
    let doc = read("docs/docker.md");
    let lists = documented_node_lists(&doc);
    for n in [3, 5] {
        let masters = check_compose(n);
        assert!(
            lists.contains(&masters.urls),
            "docs/docker.md should give REDQUORUM_NODES={} for docker/compose-{n}.yml (found {lists:?})",
            masters.urls.join(",")
        );
        let start = format!("docker compose -f docker/compose-{n}.yml up -d");
        assert!(doc.contains(&start), "docs/docker.md should say `{start}`");
    }
    // Every loopback URL the page mentions belongs to a master of the 5-node file.
    let five = check_compose(5).urls;
    for (i, _) in doc.match_indices("redis://127.0.0.1:") {
        let url: String = doc[i..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || matches!(c, ':' | '/' | '.'))
            .collect();
        assert!(
            five.contains(&url),
            "docs/docker.md mentions {url}, which no compose file maps"
        );
    }
}

#[test]
fn parser_reads_the_subset_and_refuses_the_rest() {
    let doc = parse_yaml(
        "# c\nname: x # trailing\nservices:\n  a:\n    command: [\"r\", 'q''s', plain]\n    ports:\n    - \"1:2\"\n    h: {}\nvolumes:\n  v:\n",
    )
    .expect("parses");
    let a = doc
        .get("services")
        .and_then(|s| s.get("a"))
        .expect("service a");
    assert_eq!(
        a.get("command").map(Yaml::strings),
        Some(vec!["r".into(), "q's".into(), "plain".into()])
    );
    assert_eq!(
        a.get("ports").map(Yaml::strings),
        Some(vec!["1:2".to_owned()])
    );
    assert_eq!(a.get("h"), Some(&Yaml::Map(Vec::new())));
    assert_eq!(doc.get("name").and_then(Yaml::str), Some("x"));
    assert_eq!(
        doc.get("volumes").and_then(|v| v.get("v")),
        Some(&Yaml::Null)
    );

    for bad in [
        "a: &anchor\n  b: c\n",
        "a: *alias\n",
        "<<: x\n",
        "a: |\n  text\n",
        "a: {b: c}\n",
        "a:\n\tb: c\n",
        "a: b\na: c\n",
        "a: b\n  c: d\n",
        "---\na: b\n",
        "a:\n  - b: c\n",
        "a: [b, [c]]\n",
        "a: \"open\n",
    ] {
        assert!(parse_yaml(bad).is_err(), "should refuse {bad:?}");
    }
}
