//! A small GBNF recognizer for tests: it checks that a generated grammar accepts the answers it
//! should and rejects the ones it should not, without loading a model. It supports what
//! [`Grammar::build`](super::Grammar::build) emits: literals, character classes, rule
//! references, groups, alternation, `?`, `*`, `+` and `{m,n}`.

use std::collections::{BTreeSet, HashMap};

#[derive(Debug, Clone)]
enum Node {
    Literal(Vec<char>),
    Class {
        negated: bool,
        ranges: Vec<(char, char)>,
    },
    Rule(String),
    Alt(Vec<Vec<Node>>),
    Repeat {
        node: Box<Node>,
        min: usize,
        max: Option<usize>,
    },
}

/// Whether `grammar` (start rule `root`) derives exactly `text`.
pub(super) fn accepts(grammar: &str, text: &str) -> bool {
    let rules = parse_grammar(grammar);
    let input: Vec<char> = text.chars().collect();
    let ends = match_node(&rules, &Node::Rule("root".into()), &input, 0);
    ends.contains(&input.len())
}

fn parse_grammar(grammar: &str) -> HashMap<String, Node> {
    grammar
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|line| {
            let (name, body) = line.split_once(" ::= ").expect("a rule");
            let chars: Vec<char> = body.chars().collect();
            let mut pos = 0;
            let node = parse_alt(&chars, &mut pos);
            assert_eq!(pos, chars.len(), "unparsed rest in {line}");
            (name.trim().to_owned(), node)
        })
        .collect()
}

fn skip_ws(c: &[char], pos: &mut usize) {
    while *pos < c.len() && c[*pos] == ' ' {
        *pos += 1;
    }
}

fn parse_alt(c: &[char], pos: &mut usize) -> Node {
    let mut alts = vec![parse_seq(c, pos)];
    while *pos < c.len() && c[*pos] == '|' {
        *pos += 1;
        alts.push(parse_seq(c, pos));
    }
    Node::Alt(alts)
}

fn parse_seq(c: &[char], pos: &mut usize) -> Vec<Node> {
    let mut seq = Vec::new();
    loop {
        skip_ws(c, pos);
        if *pos >= c.len() || c[*pos] == '|' || c[*pos] == ')' {
            return seq;
        }
        let mut node = match c[*pos] {
            '"' => Node::Literal(parse_literal(c, pos)),
            '[' => parse_class(c, pos),
            '(' => {
                *pos += 1;
                let inner = parse_alt(c, pos);
                assert_eq!(c[*pos], ')');
                *pos += 1;
                inner
            }
            _ => {
                let start = *pos;
                while *pos < c.len() && (c[*pos].is_ascii_alphanumeric() || c[*pos] == '-') {
                    *pos += 1;
                }
                Node::Rule(c[start..*pos].iter().collect())
            }
        };
        if *pos < c.len() {
            let (min, max) = match c[*pos] {
                '?' => (0, Some(1)),
                '*' => (0, None),
                '+' => (1, None),
                '{' => {
                    let close = c[*pos..].iter().position(|&x| x == '}').unwrap() + *pos;
                    let spec: String = c[*pos + 1..close].iter().collect();
                    let (lo, hi) = spec.split_once(',').unwrap_or((&spec, &spec));
                    *pos = close;
                    (
                        lo.parse().unwrap(),
                        if hi.is_empty() {
                            None
                        } else {
                            Some(hi.parse().unwrap())
                        },
                    )
                }
                _ => {
                    seq.push(node);
                    continue;
                }
            };
            *pos += 1;
            node = Node::Repeat {
                node: Box::new(node),
                min,
                max,
            };
        }
        seq.push(node);
    }
}

fn parse_escape(c: &[char], pos: &mut usize) -> char {
    *pos += 1;
    let e = c[*pos];
    *pos += 1;
    match e {
        'n' => '\n',
        'r' => '\r',
        't' => '\t',
        'x' => {
            let hex: String = c[*pos..*pos + 2].iter().collect();
            *pos += 2;
            char::from_u32(u32::from_str_radix(&hex, 16).unwrap()).unwrap()
        }
        other => other,
    }
}

fn parse_literal(c: &[char], pos: &mut usize) -> Vec<char> {
    *pos += 1;
    let mut out = Vec::new();
    while c[*pos] != '"' {
        if c[*pos] == '\\' {
            out.push(parse_escape(c, pos));
        } else {
            out.push(c[*pos]);
            *pos += 1;
        }
    }
    *pos += 1;
    out
}

fn parse_class(c: &[char], pos: &mut usize) -> Node {
    *pos += 1;
    let negated = c[*pos] == '^';
    if negated {
        *pos += 1;
    }
    let mut ranges = Vec::new();
    while c[*pos] != ']' {
        let lo = if c[*pos] == '\\' {
            parse_escape(c, pos)
        } else {
            *pos += 1;
            c[*pos - 1]
        };
        let hi = if c[*pos] == '-' && c[*pos + 1] != ']' {
            *pos += 1;
            if c[*pos] == '\\' {
                parse_escape(c, pos)
            } else {
                *pos += 1;
                c[*pos - 1]
            }
        } else {
            lo
        };
        ranges.push((lo, hi));
    }
    *pos += 1;
    Node::Class { negated, ranges }
}

/// Every position at which `node` can end when it starts at `at`.
fn match_node(
    rules: &HashMap<String, Node>,
    node: &Node,
    input: &[char],
    at: usize,
) -> BTreeSet<usize> {
    match node {
        Node::Literal(lit) => {
            let end = at + lit.len();
            if input.get(at..end) == Some(lit.as_slice()) {
                BTreeSet::from([end])
            } else {
                BTreeSet::new()
            }
        }
        Node::Class { negated, ranges } => match input.get(at) {
            Some(&ch) if ranges.iter().any(|&(lo, hi)| (lo..=hi).contains(&ch)) != *negated => {
                BTreeSet::from([at + 1])
            }
            _ => BTreeSet::new(),
        },
        Node::Rule(name) => match_node(rules, &rules[name], input, at),
        Node::Alt(alts) => alts
            .iter()
            .flat_map(|seq| {
                seq.iter().fold(BTreeSet::from([at]), |starts, n| {
                    starts
                        .iter()
                        .flat_map(|&s| match_node(rules, n, input, s))
                        .collect()
                })
            })
            .collect(),
        Node::Repeat { node, min, max } => {
            let mut ends = BTreeSet::new();
            let mut frontier = BTreeSet::from([at]);
            let mut seen = BTreeSet::new();
            for count in 0.. {
                if count >= *min {
                    ends.extend(frontier.iter().copied());
                }
                // Past the minimum, a position already reached adds nothing new.
                if count >= *min {
                    frontier.retain(|p| seen.insert(*p));
                }
                if max.is_some_and(|m| count == m) || frontier.is_empty() {
                    break;
                }
                frontier = frontier
                    .iter()
                    .flat_map(|&s| match_node(rules, node, input, s))
                    .collect();
            }
            ends
        }
    }
}
