//! YAML text to trees of nodes that remember where they start.
//!
//! Built from yaml-rust2's pull parser without recursion, under limits on nesting and on the
//! size a document reaches once its aliases are expanded, so hostile input (deep nesting,
//! "billion laughs") ends in an error instead of a stack overflow or an exhausted memory.
//! Aliases share their anchor's node rather than copying it.

use std::collections::HashMap;
use std::rc::Rc;
use yaml_rust2::parser::{Event, Parser, Tag};
use yaml_rust2::scanner::{Marker, TScalarStyle};

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

/// What a scalar is under the YAML 1.2 core schema.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum ScalarKind {
    Null,
    Bool(bool),
    Int(i64),
    UInt(u64),
    Float(f64),
    Str,
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

fn core_tag(tag: &Tag) -> Option<&str> {
    match tag.handle.as_str() {
        "tag:yaml.org,2002:" | "!!" => Some(tag.suffix.as_str()),
        _ => None,
    }
}

fn tag_name(tag: &Tag) -> String {
    format!("{}{}", tag.handle, tag.suffix)
}

fn check_collection_tag(tag: Option<&Tag>, expected: &str, mark: Mark) -> Result<(), LoadError> {
    match tag {
        None => Ok(()),
        Some(t) if core_tag(t) == Some(expected) => Ok(()),
        Some(t) => Err(LoadError::Tag {
            mark,
            tag: tag_name(t),
        }),
    }
}

fn resolve_scalar(
    text: &str,
    style: TScalarStyle,
    tag: Option<&Tag>,
    mark: Mark,
) -> Result<ScalarKind, LoadError> {
    let Some(tag) = tag else {
        return Ok(if style == TScalarStyle::Plain {
            resolve_plain(text)
        } else {
            ScalarKind::Str
        });
    };
    // `!` alone marks a non-specific tag: a string.
    if tag_name(tag) == "!" {
        return Ok(ScalarKind::Str);
    }
    let tagged = |tag: &'static str, ok: bool, kind: ScalarKind| {
        if ok {
            Ok(kind)
        } else {
            Err(LoadError::Tagged {
                mark,
                tag,
                text: text.to_string(),
            })
        }
    };
    let plain = resolve_plain(text);
    match core_tag(tag) {
        Some("str") => Ok(ScalarKind::Str),
        Some("null") => tagged("!!null", plain == ScalarKind::Null, plain),
        Some("bool") => tagged("!!bool", matches!(plain, ScalarKind::Bool(_)), plain),
        Some("int") => tagged(
            "!!int",
            matches!(plain, ScalarKind::Int(_) | ScalarKind::UInt(_)),
            plain,
        ),
        Some("float") => match plain {
            ScalarKind::Int(i) => Ok(ScalarKind::Float(i as f64)),
            ScalarKind::UInt(u) => Ok(ScalarKind::Float(u as f64)),
            ScalarKind::Float(_) => Ok(plain),
            _ => tagged("!!float", false, plain),
        },
        _ => Err(LoadError::Tag {
            mark,
            tag: tag_name(tag),
        }),
    }
}

/// Resolves a plain scalar by the YAML 1.2 core schema.
fn resolve_plain(text: &str) -> ScalarKind {
    match text {
        "" | "~" | "null" | "Null" | "NULL" => return ScalarKind::Null,
        "true" | "True" | "TRUE" => return ScalarKind::Bool(true),
        "false" | "False" | "FALSE" => return ScalarKind::Bool(false),
        ".inf" | ".Inf" | ".INF" | "+.inf" | "+.Inf" | "+.INF" => {
            return ScalarKind::Float(f64::INFINITY)
        }
        "-.inf" | "-.Inf" | "-.INF" => return ScalarKind::Float(f64::NEG_INFINITY),
        ".nan" | ".NaN" | ".NAN" => return ScalarKind::Float(f64::NAN),
        _ => {}
    }
    let radix = |prefix: &str, radix: u32| {
        text.strip_prefix(prefix)
            .filter(|d| !d.is_empty() && d.chars().all(|c| c.is_digit(radix)))
            .map(|d| match i64::from_str_radix(d, radix) {
                Ok(i) => ScalarKind::Int(i),
                Err(_) => u64::from_str_radix(d, radix).map_or(ScalarKind::Str, ScalarKind::UInt),
            })
    };
    if let Some(kind) = radix("0o", 8).or_else(|| radix("0x", 16)) {
        return kind;
    }
    let unsigned = text.strip_prefix(['-', '+']).unwrap_or(text);
    if !unsigned.is_empty() && unsigned.bytes().all(|b| b.is_ascii_digit()) {
        if let Ok(i) = text.parse::<i64>() {
            return ScalarKind::Int(i);
        }
        if let Ok(u) = text.trim_start_matches('+').parse::<u64>() {
            return ScalarKind::UInt(u);
        }
        return text.parse().map_or(ScalarKind::Str, ScalarKind::Float);
    }
    if is_core_float(unsigned) {
        return text.parse().map_or(ScalarKind::Str, ScalarKind::Float);
    }
    ScalarKind::Str
}

/// `(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?`, without its sign.
fn is_core_float(s: &str) -> bool {
    let (mantissa, exponent) = match s.find(['e', 'E']) {
        Some(i) => (&s[..i], Some(&s[i + 1..])),
        None => (s, None),
    };
    let (whole, fraction) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    let digits = |d: &str| d.bytes().all(|b| b.is_ascii_digit());
    let mantissa_ok = digits(whole)
        && digits(fraction)
        && (!whole.is_empty() || !fraction.is_empty())
        && (whole.len() + fraction.len() + usize::from(mantissa.contains('.')) == mantissa.len());
    let exponent_ok = exponent.is_none_or(|e| {
        let e = e.strip_prefix(['-', '+']).unwrap_or(e);
        !e.is_empty() && digits(e)
    });
    mantissa_ok && exponent_ok
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
    fn plain_scalars() {
        use ScalarKind::*;
        let cases = [
            ("", Null),
            ("~", Null),
            ("null", Null),
            ("true", Bool(true)),
            ("False", Bool(false)),
            ("yes", Str),
            ("42", Int(42)),
            ("-7", Int(-7)),
            ("+7", Int(7)),
            ("0x1F", Int(31)),
            ("0o17", Int(15)),
            ("18446744073709551615", UInt(u64::MAX)),
            ("1.5", Float(1.5)),
            (".5", Float(0.5)),
            ("1e3", Float(1000.0)),
            ("-2.5E-1", Float(-0.25)),
            (".inf", Float(f64::INFINITY)),
            ("500m", Str),
            ("1_000", Str),
            ("1.2.3", Str),
            ("inf", Str),
            ("e5", Str),
            ("1e", Str),
            ("0x", Str),
            ("texu.io/v1", Str),
        ];
        for (text, want) in cases {
            assert_eq!(resolve_plain(text), want, "{text:?}");
        }
        assert!(matches!(resolve_plain(".nan"), Float(f) if f.is_nan()));
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
