//! File path sanitising: how names and path components from a `.torrent` become relative paths
//! that can only ever point inside the download directory.
//!
//! The rule, applied to the torrent `name` and to each component of each file's `path`:
//! 1. bytes that are not UTF-8 are replaced by U+FFFD (the raw bytes stay available);
//! 2. the separators `/` and `\`, NUL and other ASCII control characters are removed from inside
//!    the component (so `foo/../bar` becomes `foo..bar`, one harmless name);
//! 3. a component that is then empty, `.` or `..` is dropped;
//! 4. a component longer than 255 bytes is shortened (keeping its extension);
//! 5. a file whose components are all dropped is named `_`; a torrent name that is dropped
//!    becomes the hex info-hash (as libtorrent does);
//! 6. two files that end up with the same path get `.1`, `.2`, ... appended to the later ones.
//!
//! After this a [`SafePath`] has only normal components: no root, no prefix, no `..`. Joining
//! it to a directory cannot leave that directory (a test checks this on every fixture).

use std::path::{Component, Path, PathBuf};

/// Longest file-name component most file systems accept.
pub const MAX_COMPONENT_BYTES: usize = 255;

/// A relative path made only of clean components, kept as one string with `/` between them
/// (a clean component holds no `/`): one allocation a file, where a vector of strings took one
/// a component and one more, and a torrent of 100,000 files holds 100,000 of them.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SafePath(Box<str>);

impl SafePath {
    /// Cleans raw components by the rule above. Never empty: all dropped gives `_`.
    pub fn from_components<'a>(raw: impl IntoIterator<Item = &'a [u8]>) -> SafePath {
        SafePath::build(None, raw)
    }

    /// `first` (a clean component: the torrent's name), then `raw` cleaned as by
    /// [`SafePath::from_components`].
    pub(crate) fn prefixed<'a>(first: &str, raw: impl IntoIterator<Item = &'a [u8]>) -> SafePath {
        SafePath::build(Some(first), raw)
    }

    fn build<'a>(first: Option<&str>, raw: impl IntoIterator<Item = &'a [u8]>) -> SafePath {
        let mut joined = String::new();
        if let Some(first) = first {
            joined.push_str(first);
        }
        let mut any = false;
        for component in raw.into_iter().filter_map(clean_component) {
            if !joined.is_empty() {
                joined.push('/');
            }
            joined.push_str(&component);
            any = true;
        }
        if !any {
            if !joined.is_empty() {
                joined.push('/');
            }
            joined.push('_');
        }
        SafePath(joined.into_boxed_str())
    }

    /// The clean components, in order.
    pub fn components(&self) -> impl DoubleEndedIterator<Item = &str> + '_ {
        self.0.split('/')
    }

    /// The components with `/` between them.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The path relative to the content root, with `/` between components.
    pub fn to_path_buf(&self) -> PathBuf {
        PathBuf::from(&*self.0)
    }

    /// This path under `dir`. Always inside `dir`.
    pub fn under(&self, dir: &Path) -> PathBuf {
        let rel = Path::new(&*self.0);
        debug_assert!(rel.components().all(|c| matches!(c, Component::Normal(_))));
        dir.join(rel)
    }

    /// Puts `.n` before the last component's extension, as libtorrent 2.0.8 separates
    /// duplicate paths (`x.tar.gz` -> `x.tar.1.gz`, `.bashrc` -> `.1.bashrc`, `a` -> `a.1`),
    /// shortening the name before it if the component would pass [`MAX_COMPONENT_BYTES`].
    pub(crate) fn with_suffix(&self, n: usize) -> SafePath {
        let (dir, last) = match self.0.rfind('/') {
            Some(slash) => self.0.split_at(slash + 1),
            None => ("", &*self.0),
        };
        let suffix = format!(".{n}");
        let (base, extension) = last.split_at(last.rfind('.').unwrap_or(last.len()));
        let (base, extension) = if suffix.len() + extension.len() <= MAX_COMPONENT_BYTES {
            (base, extension)
        } else {
            (last, "")
        };
        let room = MAX_COMPONENT_BYTES - suffix.len() - extension.len();
        let base = &base[..floor_char_boundary(base, room)];
        SafePath(format!("{dir}{base}{suffix}{extension}").into_boxed_str())
    }

    /// Every directory this path lies in, the nearest first, each as its components with `/`
    /// between them.
    pub(crate) fn ancestors(&self) -> impl Iterator<Item = &str> + '_ {
        self.0
            .rmatch_indices('/')
            .map(|(slash, _)| &self.0[..slash])
    }
}

/// Component by component, as when a path was a list of components (`a/b` before `a.b`,
/// where the text alone would put `.` first).
impl Ord for SafePath {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.components().cmp(other.components())
    }
}

impl PartialOrd for SafePath {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl std::fmt::Display for SafePath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// The largest char boundary of `s` at or below `at`.
fn floor_char_boundary(s: &str, at: usize) -> usize {
    (0..=at.min(s.len()))
        .rev()
        .find(|&i| s.is_char_boundary(i))
        .unwrap_or(0)
}

/// One component by rules 1-4; `None` when rule 3 drops it.
pub fn clean_component(raw: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(raw);
    let mut cleaned: String = text
        .chars()
        .filter(|c| !matches!(c, '/' | '\\') && !c.is_control())
        .collect();
    if cleaned.is_empty() || cleaned == "." || cleaned == ".." {
        return None;
    }
    if cleaned.len() > MAX_COMPONENT_BYTES {
        cleaned = shorten(&cleaned);
    }
    Some(cleaned)
}

/// Cuts a long component to fit, keeping a short extension so file types survive.
fn shorten(name: &str) -> String {
    let ext = match name.rfind('.') {
        Some(dot) if name.len() - dot <= 16 && dot > 0 => &name[dot..],
        _ => "",
    };
    let mut cut = MAX_COMPONENT_BYTES - ext.len();
    while !name.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}{}", &name[..cut], ext)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn clean(parts: &[&str]) -> String {
        SafePath::from_components(parts.iter().map(|p| p.as_bytes())).to_string()
    }

    #[test]
    fn escapes_are_removed() {
        assert_eq!(clean(&["..", "..", "bar"]), "bar");
        assert_eq!(clean(&["/", "/", "bar"]), "bar");
        assert_eq!(clean(&["foo/../../../bar", "bar"]), "foo......bar/bar");
        assert_eq!(clean(&["\\", "\\", "bar"]), "bar");
        assert_eq!(clean(&["/etc", "passwd"]), "etc/passwd");
        assert_eq!(clean(&["", ""]), "_");
        assert_eq!(clean(&["."]), "_");
        assert_eq!(clean(&["a\0b"]), "ab");
    }

    #[test]
    fn long_component_keeps_extension() {
        let long = format!("{}.iso", "x".repeat(400));
        let cleaned = clean_component(long.as_bytes()).unwrap();
        assert_eq!(cleaned.len(), MAX_COMPONENT_BYTES);
        assert!(cleaned.ends_with(".iso"));
    }

    #[test]
    fn under_stays_inside() {
        let dir = Path::new("/tmp/out");
        let p = SafePath::from_components([b"..".as_slice(), b"/abs", b"x"]);
        let full = p.under(dir);
        assert!(full.starts_with(dir));
        assert_eq!(full, Path::new("/tmp/out/abs/x"));
    }
}
