//! Embeds every Avro schema under `schemas/` (current versions and `history/`) into the library,
//! so the in-process schema registry needs no files at run time.
use std::{env, fs, path::Path};

fn collect(dir: &Path, root: &Path, out: &mut Vec<(String, String)>) {
    let mut entries: Vec<_> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()))
        .map(|entry| entry.expect("directory entry").path())
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            collect(&path, root, out);
        } else if path.extension().is_some_and(|ext| ext == "avsc") {
            let relative = path.strip_prefix(root).expect("under root").display().to_string();
            out.push((relative, path.canonicalize().expect("canonical").display().to_string()));
        }
    }
}

fn main() {
    // Read at run time, not compiled in: the same build script binary may serve clones of the
    // repository in other folders that share a cargo target directory.
    let manifest_dir = env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
    let root = Path::new(&manifest_dir).join("../schemas");
    println!("cargo:rerun-if-changed={}", root.display());
    let mut files = Vec::new();
    collect(&root, &root, &mut files);
    let mut code = String::from("/// Every schema file under `schemas/`: (path relative to `schemas/`, contents).\npub const SCHEMA_SOURCES: &[(&str, &str)] = &[\n");
    for (relative, absolute) in &files {
        code.push_str(&format!("    ({relative:?}, include_str!({absolute:?})),\n"));
    }
    code.push_str("];\n");
    let out = Path::new(&env::var("OUT_DIR").expect("OUT_DIR")).join("schema_sources.rs");
    fs::write(out, code).expect("write schema_sources.rs");
}
