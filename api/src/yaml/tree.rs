//! YAML text to trees of nodes that remember where they start.
//!
//! Built from yaml-rust2's pull parser without recursion, under limits on nesting and on the
//! size a document reaches once its aliases are expanded, so hostile input (deep nesting,
//! "billion laughs") ends in an error instead of a stack overflow or an exhausted memory.
//! Aliases share their anchor's node rather than copying it.

use std::collections::HashMap;
use std::rc::Rc;
use yaml_rust2::parser::{Event, Parser};
use yaml_rust2::scanner::Marker;

use super::schema::{check_collection_tag, resolve_scalar, ScalarKind};

/// The deepest nesting of mappings and sequences a document may have.
pub const MAX_DEPTH: usize = 64;

/// The most nodes a document may have once its aliases are expanded.
pub const MAX_NODES: usize = 100_000;

/// The most scalar bytes a document may have once its aliases are expanded.
const MAX_EXPANDED_BYTES: usize = 8 << 20;

/// A position in the text, 1-based.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub(crate) struct Mark {
    pub line: usize,
    pub column: usize,
}

impl Mark {
    fn at(marker: &Marker, line_offset: usize) -> Mark {
        Mark {
            line: marker.line() + line_offset,
            column: marker.col() + 1,
        }
    }
}

/// A value and where it starts.
#[derive(Debug)]
pub(crate) struct Node {
    pub value: Value,
    pub mark: Mark,
}

#[derive(Debug)]
pub(crate) enum Value {
    Scalar(Scalar),
    Seq(Vec<Node>),
    Map(Vec<(Node, Node)>),
    /// An anchored node, at its anchor or at an alias to it.
    Shared(Rc<Node>),
}

#[derive(Debug)]
pub(crate) struct Scalar {
    pub text: String,
    pub kind: ScalarKind,
}

impl Node {
    /// The node itself, or the node an anchor or alias stands for.
    pub fn resolved(&self) -> &Node {
        let mut node = self;
        while let Value::Shared(inner) = &node.value {
            node = inner;
        }
        node
    }

    /// The text of a scalar node.
    pub fn scalar_text(&self) -> Option<&str> {
        match &self.resolved().value {
            Value::Scalar(s) => Some(&s.text),
            _ => None,
        }
    }

    /// Whether this is an empty plain scalar (`key:` with nothing after it).
    pub fn is_empty_null(&self) -> bool {
        matches!(&self.resolved().value, Value::Scalar(s) if s.kind == ScalarKind::Null && s.text.is_empty())
    }
}

/// One document of a YAML stream.
#[derive(Debug)]
pub(crate) struct Document {
    pub root: Node,
    /// Where the document starts.
    pub start: Mark,
}

/// Why a document cannot be read.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub(crate) enum LoadError {
    #[error("invalid YAML: {message}")]
    Syntax { mark: Mark, message: String },
    #[error("nesting is deeper than {MAX_DEPTH} levels")]
    TooDeep { mark: Mark },
    #[error(
        "document is too large once its aliases are expanded (more than {MAX_NODES} nodes or \
         {MAX_EXPANDED_BYTES} bytes); is it an alias bomb?"
    )]
    TooLarge { mark: Mark },
    #[error("alias to an anchor that is not defined in this document")]
    UnknownAlias { mark: Mark },
    #[error("unsupported tag {tag}: only !!str, !!int, !!float, !!bool, !!null, !!map and !!seq")]
    Tag { mark: Mark, tag: String },
    #[error("{text:?} is not a valid {tag}")]
    Tagged {
        mark: Mark,
        tag: &'static str,
        text: String,
    },
}

impl LoadError {
    /// Where the problem is.
    pub fn mark(&self) -> Mark {
        match self {
            LoadError::Syntax { mark, .. }
            | LoadError::TooDeep { mark }
            | LoadError::TooLarge { mark }
            | LoadError::UnknownAlias { mark }
            | LoadError::Tag { mark, .. }
            | LoadError::Tagged { mark, .. } => *mark,
        }
    }
}

/// Reads every document of `text`. After an error, reading resumes at the next line that
/// starts a document (`---`), so one broken document does not hide the problems of the others.
pub(crate) fn load(text: &str) -> Vec<Result<Document, LoadError>> {
    let line_starts: Vec<usize> = std::iter::once(0)
        .chain(text.match_indices('\n').map(|(i, _)| i + 1))
        .collect();
    let mut documents = Vec::new();
    let mut chunk_line = 0;
    while let Some(&start) = line_starts.get(chunk_line) {
        let Err(err) = load_chunk(&text[start..], chunk_line, &mut documents) else {
            break;
        };
        let error_line = err.mark().line.saturating_sub(1).max(chunk_line + 1);
        documents.push(Err(err));
        let next = (error_line..line_starts.len()).find(|&l| {
            let begin = line_starts[l];
            let end = line_starts.get(l + 1).copied().unwrap_or(text.len());
            starts_document(&text[begin..end])
        });
        match next {
            Some(line) => chunk_line = line,
            None => break,
        }
    }
    documents
}

fn starts_document(line: &str) -> bool {
    line.strip_prefix("---")
        .is_some_and(|rest| rest.is_empty() || rest.starts_with([' ', '\t', '\r', '\n']))
}

/// Reads the documents of one stretch of text that starts at line `line_offset` (0-based).
fn load_chunk(
    text: &str,
    line_offset: usize,
    documents: &mut Vec<Result<Document, LoadError>>,
) -> Result<(), LoadError> {
    let mut parser = Parser::new_from_str(text);
    let mut builder: Option<Builder> = None;
    loop {
        let (event, marker) = parser.next_token().map_err(|e| LoadError::Syntax {
            mark: Mark::at(e.marker(), line_offset),
            message: e.info().to_string(),
        })?;
        let mark = Mark::at(&marker, line_offset);
        match event {
            Event::StreamEnd => return Ok(()),
            Event::Nothing | Event::StreamStart => {}
            Event::DocumentStart => builder = Some(Builder::new(mark)),
            Event::DocumentEnd => {
                if let Some(done) = builder.take() {
                    documents.push(Ok(done.finish(mark)));
                }
            }
            event => builder
                .get_or_insert_with(|| Builder::new(mark))
                .event(event, mark)?,
        }
    }
}

/// How much of the limits a node uses.
#[derive(Debug, Clone, Copy, Default)]
struct Weight {
    nodes: usize,
    bytes: usize,
    /// Levels of collections, counting the node itself.
    height: usize,
}

impl Weight {
    fn add_child(&mut self, child: Weight) {
        self.nodes += child.nodes;
        self.bytes += child.bytes;
        self.height = self.height.max(child.height + 1);
    }
}

struct Frame {
    mark: Mark,
    anchor: usize,
    weight: Weight,
    kind: FrameKind,
}

enum FrameKind {
    Seq(Vec<Node>),
    Map(Vec<(Node, Node)>, Option<Node>),
}

struct Builder {
    start: Mark,
    stack: Vec<Frame>,
    root: Option<Node>,
    anchors: HashMap<usize, (Rc<Node>, Weight)>,
    nodes: usize,
    bytes: usize,
}

impl Builder {
    fn new(start: Mark) -> Builder {
        Builder {
            start,
            stack: Vec::new(),
            root: None,
            anchors: HashMap::new(),
            nodes: 0,
            bytes: 0,
        }
    }

    fn finish(self, end: Mark) -> Document {
        let root = self.root.unwrap_or(Node {
            value: Value::Scalar(Scalar {
                text: String::new(),
                kind: ScalarKind::Null,
            }),
            mark: end,
        });
        Document {
            root,
            start: self.start,
        }
    }

    fn event(&mut self, event: Event, mark: Mark) -> Result<(), LoadError> {
        match event {
            Event::Scalar(text, style, anchor, tag) => {
                let kind = resolve_scalar(&text, style, tag.as_ref(), mark)?;
                let weight = Weight {
                    nodes: 1,
                    bytes: text.len(),
                    height: 0,
                };
                self.spend(weight, mark)?;
                let node = Node {
                    value: Value::Scalar(Scalar { text, kind }),
                    mark,
                };
                self.complete(node, anchor, weight);
            }
            Event::SequenceStart(anchor, tag) => {
                check_collection_tag(tag.as_ref(), "seq", mark)?;
                self.open(mark, anchor, FrameKind::Seq(Vec::new()))?;
            }
            Event::MappingStart(anchor, tag) => {
                check_collection_tag(tag.as_ref(), "map", mark)?;
                self.open(mark, anchor, FrameKind::Map(Vec::new(), None))?;
            }
            Event::SequenceEnd | Event::MappingEnd => self.close(mark)?,
            Event::Alias(id) => {
                let (target, weight) = self
                    .anchors
                    .get(&id)
                    .map(|(node, weight)| (Rc::clone(node), *weight))
                    .ok_or(LoadError::UnknownAlias { mark })?;
                if self.stack.len() + weight.height > MAX_DEPTH {
                    return Err(LoadError::TooDeep { mark });
                }
                self.spend(weight, mark)?;
                let node = Node {
                    value: Value::Shared(target),
                    mark,
                };
                self.complete(node, 0, weight);
            }
            Event::Nothing
            | Event::StreamStart
            | Event::StreamEnd
            | Event::DocumentStart
            | Event::DocumentEnd => {}
        }
        Ok(())
    }

    /// Counts a node (or an alias's expansion) against the document's limits.
    fn spend(&mut self, weight: Weight, mark: Mark) -> Result<(), LoadError> {
        self.nodes = self.nodes.saturating_add(weight.nodes);
        self.bytes = self.bytes.saturating_add(weight.bytes);
        if self.nodes > MAX_NODES || self.bytes > MAX_EXPANDED_BYTES {
            return Err(LoadError::TooLarge { mark });
        }
        Ok(())
    }

    fn open(&mut self, mark: Mark, anchor: usize, kind: FrameKind) -> Result<(), LoadError> {
        if self.stack.len() >= MAX_DEPTH {
            return Err(LoadError::TooDeep { mark });
        }
        self.stack.push(Frame {
            mark,
            anchor,
            weight: Weight {
                nodes: 1,
                bytes: 0,
                height: 1,
            },
            kind,
        });
        Ok(())
    }

    fn close(&mut self, mark: Mark) -> Result<(), LoadError> {
        let Some(frame) = self.stack.pop() else {
            return Err(LoadError::Syntax {
                mark,
                message: "end of a collection that was never started".into(),
            });
        };
        self.spend(
            Weight {
                nodes: 1,
                bytes: 0,
                height: 0,
            },
            mark,
        )?;
        // A block mapping's start event sits after its first key; point at the key instead.
        let (value, first) = match frame.kind {
            FrameKind::Seq(items) => {
                let first = items.first().map(|n| n.mark);
                (Value::Seq(items), first)
            }
            FrameKind::Map(entries, _) => {
                let first = entries.first().map(|(k, _)| k.mark);
                (Value::Map(entries), first)
            }
        };
        let mark = first.map_or(frame.mark, |first| first.min(frame.mark));
        self.complete(Node { value, mark }, frame.anchor, frame.weight);
        Ok(())
    }

    /// Hangs a finished node on its parent, remembering it if it is anchored.
    fn complete(&mut self, node: Node, anchor: usize, weight: Weight) {
        let node = if anchor == 0 {
            node
        } else {
            let mark = node.mark;
            let shared = Rc::new(node);
            self.anchors.insert(anchor, (Rc::clone(&shared), weight));
            Node {
                value: Value::Shared(shared),
                mark,
            }
        };
        match self.stack.last_mut() {
            None => self.root = Some(node),
            Some(frame) => {
                frame.weight.add_child(weight);
                match &mut frame.kind {
                    FrameKind::Seq(items) => items.push(node),
                    FrameKind::Map(entries, pending) => match pending.take() {
                        Some(key) => entries.push((key, node)),
                        None => *pending = Some(node),
                    },
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load_one(text: &str) -> Result<Document, LoadError> {
        let mut docs = load(text);
        assert_eq!(docs.len(), 1, "{docs:#?}");
        docs.remove(0)
    }

    #[test]
    fn marks_are_one_based_and_point_at_keys() {
        let doc = load_one("a: 1\nb:\n  c: x\n").expect("loads");
        assert_eq!(doc.root.mark, Mark { line: 1, column: 1 });
        let Value::Map(entries) = &doc.root.value else {
            panic!("not a map")
        };
        assert_eq!(entries[0].1.mark, Mark { line: 1, column: 4 });
        assert_eq!(entries[1].1.mark, Mark { line: 3, column: 3 });
    }

    #[test]
    fn documents_and_recovery() {
        let docs = load("a: 1\n---\nb: [1, 2\n---\nc: 3\n---\n");
        assert_eq!(docs.len(), 4, "{docs:#?}");
        assert!(docs[0].is_ok());
        let err = docs[1].as_ref().expect_err("syntax error");
        assert!(matches!(err, LoadError::Syntax { .. }), "{err:?}");
        let third = docs[2].as_ref().expect("recovers");
        assert_eq!(third.root.mark.line, 5);
        assert!(docs[3].as_ref().is_ok_and(|d| d.root.is_empty_null()));
        assert!(load("").is_empty());
        assert!(load("# nothing\n").is_empty());
    }

    #[test]
    fn depth_limit() {
        let ok = format!("{}{}", "[".repeat(MAX_DEPTH), "]".repeat(MAX_DEPTH));
        assert!(load_one(&ok).is_ok());
        let deep = format!("{}{}", "[".repeat(MAX_DEPTH + 1), "]".repeat(MAX_DEPTH + 1));
        assert!(matches!(load_one(&deep), Err(LoadError::TooDeep { .. })));
        let block: String = (0..200)
            .map(|i| format!("{}- \n", "  ".repeat(i)))
            .collect();
        assert!(load_one(&block).is_err());
        let flow = "[".repeat(100_000);
        assert!(load_one(&flow).is_err());
    }

    #[test]
    fn alias_depth_counts() {
        let nested = format!("{}{}", "[".repeat(40), "]".repeat(40));
        let text =
            format!("a: &x {nested}\nb: [[[[[[[[[[[[[[[[[[[[[[[[[[*x]]]]]]]]]]]]]]]]]]]]]]]]]\n");
        assert!(matches!(load_one(&text), Err(LoadError::TooDeep { .. })));
    }

    #[test]
    fn alias_bomb() {
        let mut text = String::from(
            "a: &a [\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\"]\n",
        );
        let names = ["a", "b", "c", "d", "e", "f", "g", "h", "i"];
        for w in names.windows(2) {
            let refs = vec![format!("*{}", w[0]); 9].join(",");
            text.push_str(&format!("{}: &{} [{refs}]\n", w[1], w[1]));
        }
        assert!(matches!(load_one(&text), Err(LoadError::TooLarge { .. })));
        // A big scalar repeated by aliases is caught by bytes, not nodes.
        let big = "x".repeat(100_000);
        let text = format!("a: &a {big}\nb: [{}]\n", vec!["*a"; 100].join(","));
        assert!(matches!(load_one(&text), Err(LoadError::TooLarge { .. })));
    }

    #[test]
    fn tags() {
        let doc = load_one("a: !!str 1\nb: !!float 2\nc: ! 3\n").expect("loads");
        let Value::Map(entries) = &doc.root.value else {
            panic!("not a map")
        };
        let kinds: Vec<ScalarKind> = entries
            .iter()
            .map(|(_, v)| match &v.value {
                Value::Scalar(s) => s.kind,
                _ => ScalarKind::Null,
            })
            .collect();
        assert_eq!(
            kinds,
            [ScalarKind::Str, ScalarKind::Float(2.0), ScalarKind::Str]
        );
        assert!(matches!(
            load_one("a: !foo 1\n"),
            Err(LoadError::Tag { .. })
        ));
        assert!(matches!(
            load_one("a: !!int x\n"),
            Err(LoadError::Tagged { .. })
        ));
        assert!(matches!(
            load_one("!!set {a: 1}\n"),
            Err(LoadError::Tag { .. })
        ));
    }

    #[test]
    fn unknown_alias() {
        let docs = load("a: &x 1\n---\nb: *x\n");
        assert_eq!(docs.len(), 2);
        assert!(docs[1].is_err(), "{docs:#?}");
    }
}
