//! The keys a configuration struct accepts, read from its `Deserialize` impl
//! (by `serde-reflection`), so that a test can hold the init templates and the
//! reference to every field there is. Only for tests: the `fields` feature.

use std::path::Path;

use serde::de::DeserializeOwned;
use serde_reflection::{ContainerFormat, Format, Named, Registry, Tracer, TracerConfig};

use super::template::{embed, key_lines, uncomment_defaults};

/// Every key `T` accepts, as dotted paths (`https.listen`); the fields of an
/// array of tables are under the array's name (`regions.cidr`).
pub fn fields<T: DeserializeOwned>() -> anyhow::Result<Vec<String>> {
    let mut tracer = Tracer::new(TracerConfig::default());
    let (root, _) = tracer
        .trace_simple_type::<T>()
        .map_err(|e| anyhow::anyhow!("tracing the config struct: {e}"))?;
    // Only the structs matter: enums (a socket address's V4 and V6) may stay
    // partly explored.
    let registry = tracer.registry_unchecked();
    let mut keys = Vec::new();
    let top = table(&registry, &root).ok_or_else(|| anyhow::anyhow!("not a struct"))?;
    walk(&registry, top, "", &mut keys);
    Ok(keys)
}

fn walk(registry: &Registry, fields: &[Named<Format>], prefix: &str, keys: &mut Vec<String>) {
    for field in fields {
        let key = format!("{prefix}{}", field.name);
        match table(registry, &field.value) {
            Some(inner) => walk(registry, inner, &format!("{key}."), keys),
            None => keys.push(key),
        }
    }
}

/// The fields of the table `format` is, through options and arrays.
fn table<'a>(registry: &'a Registry, format: &Format) -> Option<&'a [Named<Format>]> {
    match format {
        Format::Option(inner) | Format::Seq(inner) => table(registry, inner),
        Format::TypeName(name) => match registry.get(name)? {
            ContainerFormat::Struct(fields) => Some(fields),
            _ => None,
        },
        _ => None,
    }
}

/// Checks a daemon's init template against its config struct `T`: the template
/// shows every key `T` accepts and no other, and means the defaults both as it
/// is and with every default written out. `parse` checks a file's text into the
/// daemon's configuration, shown with `Debug`.
pub fn check_template<T: DeserializeOwned>(
    template: &str,
    parse: impl Fn(&str) -> anyhow::Result<String>,
) -> anyhow::Result<()> {
    let mut accepted = fields::<T>()?;
    let mut shown: Vec<String> = key_lines(template).into_iter().map(|k| k.key).collect();
    accepted.sort();
    shown.sort();
    anyhow::ensure!(
        shown == accepted,
        "the template shows {shown:?}\nbut the config accepts {accepted:?}"
    );
    let defaults = parse("")?;
    anyhow::ensure!(
        parse(template)? == defaults,
        "the template is not the defaults"
    );
    let written_out = uncomment_defaults(template);
    anyhow::ensure!(
        parse(&written_out)? == defaults,
        "a value shown as a default is not the default:\n{written_out}"
    );
    Ok(())
}

/// Checks that `docs/config.md` shows a daemon's own part of its template as it
/// is, between the `<!-- begin NAME -->` and `<!-- end NAME -->` marks, and the
/// `[metrics]` and `[connections]` parts both share; with `CARTABLE_BLESS=1`,
/// rewrites them.
pub fn check_reference(name: &str, own: &str) -> anyhow::Result<()> {
    let parts = [
        (name, own),
        ("metrics", crate::metrics::TEMPLATE),
        ("connections", crate::https::limits::TEMPLATE),
    ];
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/config.md");
    let doc = std::fs::read_to_string(&path)?;
    let mut want = doc.clone();
    for (name, part) in parts {
        want = embed(&want, name, part)?;
    }
    if std::env::var_os("CARTABLE_BLESS").is_some() {
        std::fs::write(&path, &want)?;
        return Ok(());
    }
    anyhow::ensure!(
        doc == want,
        "docs/config.md does not show the templates as they are: run this test with \
         CARTABLE_BLESS=1 to update it"
    );
    Ok(())
}
