//! YAML path → line index: walks yaml-rust2's event stream once so errors found after
//! deserialisation (which loses positions) can still say "line 14".
//!
//! Paths use the same spelling as `serde_path_to_error`: `routes[2].upstream`,
//! `upstreams.app.servers[0]`. A mapping key gets the line of the key; a sequence item the
//! line where the item starts.

use std::collections::HashMap;

use yaml_rust2::parser::{Event, Parser};

/// Maps YAML paths to 1-based line numbers.
#[derive(Debug, Default, Clone)]
pub struct LineIndex {
    lines: HashMap<String, usize>,
    /// The first key seen twice in one mapping: its path, its line, the first one's line.
    /// (serde_yaml reports a duplicate at the line where the mapping starts.)
    duplicate: Option<(String, usize, usize)>,
}

enum Frame {
    Mapping {
        path: String,
        /// The key whose value comes next; `None` while waiting for a key.
        key: Option<String>,
        /// Nesting depth of a complex (non-scalar) key being skipped.
        skipping_key: bool,
    },
    Sequence {
        path: String,
        index: usize,
    },
}

fn join_key(parent: &str, key: &str) -> String {
    if parent.is_empty() {
        key.to_string()
    } else {
        format!("{parent}.{key}")
    }
}

impl LineIndex {
    /// Builds the index; a document that does not scan yields the entries seen so far
    /// (the syntax error itself is reported by the deserialiser).
    pub fn build(yaml: &str) -> Self {
        let mut index = LineIndex::default();
        let mut stack: Vec<Frame> = Vec::new();
        let mut parser = Parser::new_from_str(yaml);
        // Depth of nested collections inside a complex mapping key, which we do not index.
        let mut skip_depth = 0usize;
        while let Ok((event, mark)) = parser.next_token() {
            let line = mark.line();
            if skip_depth > 0 {
                match event {
                    Event::MappingStart(..) | Event::SequenceStart(..) => skip_depth += 1,
                    Event::MappingEnd | Event::SequenceEnd => {
                        skip_depth -= 1;
                        if skip_depth == 0 {
                            Self::value_done(&mut stack);
                        }
                    }
                    _ => {}
                }
                continue;
            }
            match event {
                Event::StreamEnd | Event::DocumentEnd => break,
                Event::Scalar(value, ..) => {
                    if let Some(Frame::Mapping {
                        path,
                        key: key @ None,
                        skipping_key: false,
                    }) = stack.last_mut()
                    {
                        let key_path = join_key(path, &value);
                        match index.lines.get(&key_path) {
                            Some(&first) => {
                                if index.duplicate.is_none() {
                                    index.duplicate = Some((key_path, line, first));
                                }
                            }
                            None => {
                                index.lines.insert(key_path, line);
                            }
                        }
                        *key = Some(value);
                    } else {
                        index.note_value_start(&stack, line);
                        Self::value_done(&mut stack);
                    }
                }
                Event::Alias(_) => {
                    index.note_value_start(&stack, line);
                    Self::value_done(&mut stack);
                }
                Event::MappingStart(..) | Event::SequenceStart(..) => {
                    if let Some(Frame::Mapping { key: None, .. }) = stack.last() {
                        // A collection used as a mapping key: skip it and its value's key slot.
                        if let Some(Frame::Mapping { skipping_key, .. }) = stack.last_mut() {
                            *skipping_key = true;
                        }
                        skip_depth = 1;
                        continue;
                    }
                    index.note_value_start(&stack, line);
                    let path = Self::child_path(&stack);
                    stack.push(if matches!(event, Event::MappingStart(..)) {
                        Frame::Mapping {
                            path,
                            key: None,
                            skipping_key: false,
                        }
                    } else {
                        Frame::Sequence { path, index: 0 }
                    });
                }
                Event::MappingEnd | Event::SequenceEnd => {
                    stack.pop();
                    Self::value_done(&mut stack);
                }
                _ => {}
            }
        }
        index
    }

    /// The first key written twice in one mapping: `(path, line, line of the first)`.
    pub fn duplicate(&self) -> Option<(&str, usize, usize)> {
        self.duplicate
            .as_ref()
            .map(|(path, line, first)| (path.as_str(), *line, *first))
    }

    /// The path of the value that the top frame is about to receive.
    fn child_path(stack: &[Frame]) -> String {
        match stack.last() {
            None => String::new(),
            Some(Frame::Mapping { path, key, .. }) => join_key(path, key.as_deref().unwrap_or("")),
            Some(Frame::Sequence { path, index }) => format!("{path}[{index}]"),
        }
    }

    /// Sequence items are indexed at the line they start on.
    fn note_value_start(&mut self, stack: &[Frame], line: usize) {
        if let Some(Frame::Sequence { .. }) = stack.last() {
            self.lines.entry(Self::child_path(stack)).or_insert(line);
        }
    }

    /// The top frame received a complete value: move on to the next key / item.
    fn value_done(stack: &mut [Frame]) {
        match stack.last_mut() {
            Some(Frame::Mapping {
                key, skipping_key, ..
            }) => {
                if *skipping_key {
                    // The complex key is done; its value follows and is skipped as a value
                    // with an empty key name.
                    *skipping_key = false;
                    *key = Some(String::new());
                } else {
                    *key = None;
                }
            }
            Some(Frame::Sequence { index, .. }) => *index += 1,
            None => {}
        }
    }

    /// The line of `path`, or of its nearest indexed parent (`routes[2].upstream` →
    /// `routes[2]` → `routes`).
    pub fn line_of(&self, path: &str) -> Option<usize> {
        let mut p = path;
        loop {
            if let Some(line) = self.lines.get(p) {
                return Some(*line);
            }
            let cut = p.rfind(['.', '['])?;
            p = &p[..cut];
        }
    }

    /// The line of `path` only if it is itself indexed.
    pub fn exact(&self, path: &str) -> Option<usize> {
        self.lines.get(path).copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const YAML: &str = "\
server:
  max_body_bytes: 10MiB
listeners:
  - name: https
    bind: \"127.0.0.1:8443\"
    tls:
      certificates:
        - cert: a.crt
          key: a.key
      alpn: [h2, http/1.1]
upstreams:
  app:
    servers:
      - \"127.0.0.1:8001\"
      - { address: \"127.0.0.1:8002\", weight: 2 }
routes:
  - match: { path_prefix: / }
    upstream: app
  - match:
      path_prefix: /api/
    upstream: ap
";

    #[test]
    fn keys_and_items_get_their_lines() {
        let idx = LineIndex::build(YAML);
        assert_eq!(idx.exact("server"), Some(1));
        assert_eq!(idx.exact("server.max_body_bytes"), Some(2));
        assert_eq!(idx.exact("listeners[0]"), Some(4));
        assert_eq!(idx.exact("listeners[0].bind"), Some(5));
        assert_eq!(idx.exact("listeners[0].tls.certificates[0].key"), Some(9));
        assert_eq!(idx.exact("listeners[0].tls.alpn[1]"), Some(10));
        assert_eq!(idx.exact("upstreams.app.servers[0]"), Some(14));
        assert_eq!(idx.exact("upstreams.app.servers[1].weight"), Some(15));
        assert_eq!(idx.exact("routes[0].match.path_prefix"), Some(17));
        assert_eq!(idx.exact("routes[1].match.path_prefix"), Some(20));
        assert_eq!(idx.exact("routes[1].upstream"), Some(21));
    }

    #[test]
    fn lookup_falls_back_to_the_nearest_parent() {
        let idx = LineIndex::build(YAML);
        assert_eq!(idx.line_of("routes[1].jwt"), Some(19));
        assert_eq!(idx.line_of("upstreams.app.balance"), Some(12));
        assert_eq!(idx.line_of("logging.level"), None);
        assert_eq!(idx.line_of(""), None);
    }

    #[test]
    fn broken_or_odd_documents_do_not_panic() {
        let idx = LineIndex::build("a: [1, 2\nb: {");
        assert_eq!(idx.exact("a"), Some(1));
        let idx = LineIndex::build("? [x, y]\n: 1\nz: &anc {k: 1}\nw: *anc\n");
        assert_eq!(idx.exact("z.k"), Some(3));
        assert_eq!(idx.exact("w"), Some(4));
        let _ = LineIndex::build("");
    }
}
