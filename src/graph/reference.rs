//! Image reference spellings: enough of the docker reference grammar to tell whether two
//! strings name the same image, and to compute the name BuildKit looks a named context up by.

/// The fully qualified form `DOMAIN/PATH:TAG` (`alpine` → `docker.io/library/alpine:latest`),
/// or `None` for a reference pinned by digest: such a `FROM` can never mean "the image this
/// project is about to build".
pub(crate) fn canonical(reference: &str) -> Option<String> {
    if reference.is_empty() || reference.contains('@') || reference.contains(char::is_whitespace) {
        return None;
    }
    let (name, tag) = match reference.rfind(':') {
        Some(i) if !reference[i..].contains('/') => (&reference[..i], &reference[i + 1..]),
        _ => (reference, "latest"),
    };
    if name.is_empty() || tag.is_empty() {
        return None;
    }
    let (domain, path) = match name.split_once('/') {
        Some((first, rest)) if first.contains(['.', ':']) || first == "localhost" => {
            (first, rest.to_string())
        }
        Some(_) => ("docker.io", name.to_string()),
        None => ("docker.io", format!("library/{name}")),
    };
    let domain = if domain == "index.docker.io" {
        "docker.io"
    } else {
        domain
    };
    let path = if domain == "docker.io" && !path.contains('/') {
        format!("library/{path}")
    } else {
        path
    };
    Some(format!("{domain}/{path}:{tag}"))
}

/// The short form BuildKit's Dockerfile frontend uses as the key of a named context
/// (`context:KEY`): Docker Hub prefixes and a `:latest` tag are dropped, so `FROM alpine` and
/// `FROM docker.io/library/alpine:latest` both look up `alpine`.
pub fn familiar(reference: &str) -> String {
    let mut name = reference;
    for prefix in [
        "docker.io/library/",
        "index.docker.io/library/",
        "docker.io/",
        "index.docker.io/",
    ] {
        if let Some(rest) = name.strip_prefix(prefix) {
            name = rest;
            break;
        }
    }
    name.strip_suffix(":latest").unwrap_or(name).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_forms() {
        assert_eq!(
            canonical("alpine").unwrap(),
            "docker.io/library/alpine:latest"
        );
        assert_eq!(
            canonical("docker.io/library/alpine:latest").unwrap(),
            "docker.io/library/alpine:latest"
        );
        assert_eq!(canonical("user/app:1").unwrap(), "docker.io/user/app:1");
        assert_eq!(
            canonical("localhost:5000/acme/pybase:dev").unwrap(),
            "localhost:5000/acme/pybase:dev"
        );
        assert_eq!(
            canonical("localhost:5000/acme/pybase").unwrap(),
            "localhost:5000/acme/pybase:latest"
        );
        assert_eq!(canonical("localhost/x").unwrap(), "localhost/x:latest");
        assert_eq!(canonical("alpine@sha256:abc"), None);
        assert_eq!(canonical(""), None);
        assert_eq!(canonical("repo/x:"), None);
    }

    #[test]
    fn familiar_forms() {
        assert_eq!(familiar("docker.io/library/alpine:latest"), "alpine");
        assert_eq!(familiar("docker.io/user/app:1"), "user/app:1");
        assert_eq!(
            familiar("localhost:5000/acme/pybase:dev"),
            "localhost:5000/acme/pybase:dev"
        );
        assert_eq!(familiar("luamods"), "luamods");
    }
}
