//! The browser client, `client.js` (an ES module) and its TypeScript types `client.d.ts`,
//! embedded in the binary so any corecast port can serve them with no file system and no build
//! step: the WebSocket port answers `GET /client.js` and `GET /client.d.ts`, and the control
//! plane may serve the same [`asset`]s.
//!
//! The same two files are the npm package `corecast-client` (`package.json` and the package's
//! `README.md` beside them; `npm pack` in this folder builds it), so the module a page imports
//! from a server and the one an application installs are one source, at one version: the
//! crate's.
//!
//! This module only names the files and their media types; it never touches a socket (each
//! port frames the HTTP response its own way).

/// One embedded file and the `Content-Type` it is served with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Asset {
    pub content_type: &'static str,
    pub body: &'static [u8],
}

/// Every embedded file, by the request path that serves it.
const ASSETS: [(&str, Asset); 2] = [
    (
        "/client.js",
        Asset {
            content_type: "text/javascript; charset=utf-8",
            body: include_str!("client.js").as_bytes(),
        },
    ),
    (
        "/client.d.ts",
        Asset {
            content_type: "application/typescript; charset=utf-8",
            body: include_str!("client.d.ts").as_bytes(),
        },
    ),
];

/// The asset served at `path` (the request path without its query), if there is one.
pub fn asset(path: &str) -> Option<Asset> {
    ASSETS
        .iter()
        .find(|(served_at, _)| *served_at == path)
        .map(|(_, asset)| *asset)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_client_and_its_types_are_served_with_their_media_types() {
        let script = asset("/client.js").expect("/client.js is embedded");
        assert_eq!(script.content_type, "text/javascript; charset=utf-8");
        assert_eq!(script.body, include_bytes!("client.js"));
        let types = asset("/client.d.ts").expect("/client.d.ts is embedded");
        assert_eq!(types.content_type, "application/typescript; charset=utf-8");
        assert_eq!(types.body, include_bytes!("client.d.ts"));
    }

    /// The npm package (`package.json`) ships exactly the served files, at the crate's version:
    /// a release that bumps `Cargo.toml` and not the package, or the reverse, fails here.
    #[test]
    fn the_npm_package_ships_the_served_files_at_the_crate_version() {
        let package: serde_json::Value =
            serde_json::from_str(include_str!("package.json")).expect("package.json is JSON");
        assert_eq!(
            package["version"],
            env!("CARGO_PKG_VERSION"),
            "src/web/package.json's version must be Cargo.toml's"
        );
        assert_eq!(package["name"], "corecast-client");
        assert_eq!(package["type"], "module");
        assert_eq!(
            package["exports"],
            serde_json::json!({ ".": { "types": "./client.d.ts", "default": "./client.js" } })
        );
        assert_eq!(package["types"], "./client.d.ts");
        assert_eq!(
            package["files"],
            serde_json::json!(["client.js", "client.d.ts"])
        );
        for shipped in package["files"].as_array().expect("a files list") {
            let served_at = format!("/{}", shipped.as_str().expect("a file name"));
            assert!(asset(&served_at).is_some(), "{served_at} is not served");
        }
    }

    #[test]
    fn other_paths_have_no_asset() {
        for path in [
            "/",
            "/ws",
            "/client.js/",
            "/client",
            "client.js",
            "/CLIENT.JS",
            "",
        ] {
            assert_eq!(asset(path), None, "{path:?}");
        }
    }
}
