//! The layers of `serve/`, bottom to top, and a test that holds the modules to them: a module
//! may import only from layers below its own, so there are no import cycles and each layer can
//! be read without the ones above it.

/// `serve/`'s modules by layer, bottom first. Route paths and wire types know nothing; errors
/// know the wire types; tools and validation turn requests into typed specs; state and the
/// access log hold what requests share; the generation driver feeds the engine and the chunk
/// formatters (SSE, WebSocket, Responses) consume it; handlers answer routes; the router
/// wires them; config builds everything from the flags.
pub const LAYERS: &[&[&str]] = &[
    &["routes", "protocol", "metrics"],
    &["error"],
    &["tools"],
    &["validate"],
    &["responses_store"],
    &["conversations"],
    &["registry"],
    &["state"],
    &["middleware"],
    &["generate"],
    &["prompt"],
    &["sse"],
    &["handlers", "ui"],
    &["ws"],
    &["openapi"],
    &["router"],
    &["config"],
];

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::path::Path;

    use super::LAYERS;

    fn layer_of(module: &str) -> Option<usize> {
        LAYERS.iter().position(|layer| layer.contains(&module))
    }

    /// The `serve` modules a source file imports (`super::x`, `super::super::x`,
    /// `crate::serve::x`), ignoring comments and its test module.
    fn imports(source: &str) -> BTreeSet<String> {
        let code: String = source
            .split("#[cfg(test)]")
            .next()
            .unwrap_or_default()
            .lines()
            .filter(|l| !l.trim_start().starts_with("//"))
            .collect::<Vec<_>>()
            .join("\n");
        let mut found = BTreeSet::new();
        for prefix in ["crate::serve::", "super::super::", "super::"] {
            for (at, _) in code.match_indices(prefix) {
                let rest = &code[at + prefix.len()..];
                let name: String = rest.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
                if !name.is_empty() && name != "super" {
                    found.insert(name);
                }
            }
        }
        found
    }

    fn visit(dir: &Path, files: &mut Vec<std::path::PathBuf>) {
        for entry in std::fs::read_dir(dir).expect("serve/ is readable") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                visit(&path, files);
            } else if path.extension().is_some_and(|e| e == "rs") {
                files.push(path);
            }
        }
    }

    #[test]
    fn every_module_imports_only_from_lower_layers() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/serve");
        let mut files = Vec::new();
        visit(&root, &mut files);
        let mut violations = Vec::new();
        for file in &files {
            let relative = file.strip_prefix(&root).expect("under serve/");
            let top = relative.components().next().and_then(|c| c.as_os_str().to_str()).unwrap_or_default();
            let module = top.trim_end_matches(".rs");
            if matches!(module, "mod" | "tests" | "layers") || relative.to_string_lossy().contains("tests") {
                continue;
            }
            let own = layer_of(module).unwrap_or_else(|| panic!("serve/{module} is on no layer: add it to LAYERS"));
            for imported in imports(&std::fs::read_to_string(file).expect("source")) {
                if let Some(layer) = layer_of(&imported)
                    && imported != module
                    && layer >= own
                {
                    violations.push(format!("{} imports {imported}", relative.display()));
                }
            }
        }
        assert!(violations.is_empty(), "imports that go up or sideways: {violations:#?}");
    }

    #[test]
    fn the_import_scanner_sees_what_it_must() {
        let found = imports("use super::error::ApiError;\n// use super::router;\nuse crate::serve::state::X;\n#[cfg(test)]\nuse super::ws;");
        assert_eq!(found.into_iter().collect::<Vec<_>>(), ["error", "state"]);
    }
}
