//! Query filters: compiled once per command and matched per document, with
//! the server's equality (an array matches its elements, a missing field
//! equals `null`, numbers compare across types) and its order over BSON
//! values, also used to sort.

use super::unmodelled;
use crate::mongo::error::{CommandError, CommandResult};
use crate::mongo::umc::args::truthy;
use bson::{Bson, Document};
use std::cmp::Ordering;

#[derive(Debug, Clone, Copy)]
pub(super) enum CmpOp {
    Gt,
    Gte,
    Lt,
    Lte,
}

#[derive(Debug)]
pub(super) enum Cond {
    Eq(Bson),
    Ne(Bson),
    In(Vec<Bson>),
    Nin(Vec<Bson>),
    Exists(bool),
    Cmp(CmpOp, Bson),
    Not(Vec<Cond>),
}

/// A compiled query filter.
#[derive(Debug)]
pub(super) enum Filter {
    And(Vec<Filter>),
    Or(Vec<Filter>),
    Nor(Vec<Filter>),
    Path(String, Vec<Cond>),
}

const UNMODELLED_TOP_LEVEL: &[&str] = &["$expr", "$where", "$text", "$jsonSchema", "$sampleRate", "$alwaysTrue"];
const UNMODELLED_OPERATORS: &[&str] = &[
    "$regex",
    "$options",
    "$elemMatch",
    "$size",
    "$all",
    "$type",
    "$mod",
    "$bitsAllSet",
    "$bitsAnySet",
    "$bitsAllClear",
    "$bitsAnyClear",
    "$geoWithin",
    "$geoIntersects",
    "$near",
    "$nearSphere",
];

pub(super) fn compile(filter: &Document) -> CommandResult<Filter> {
    let mut parts = Vec::new();
    for (key, value) in filter {
        match key.as_str() {
            "$and" | "$or" | "$nor" => {
                let Bson::Array(items) = value else {
                    return Err(CommandError::bad_value(format!("{key} must be an array")));
                };
                if items.is_empty() {
                    return Err(CommandError::bad_value("$and/$or/$nor must be a nonempty array"));
                }
                let subs = items
                    .iter()
                    .map(|i| match i {
                        Bson::Document(d) => compile(d),
                        _ => Err(CommandError::bad_value("$or/$and/$nor entries need to be full objects")),
                    })
                    .collect::<CommandResult<Vec<_>>>()?;
                parts.push(match key.as_str() {
                    "$and" => Filter::And(subs),
                    "$or" => Filter::Or(subs),
                    _ => Filter::Nor(subs),
                });
            }
            "$comment" => {}
            k if UNMODELLED_TOP_LEVEL.contains(&k) => return Err(unmodelled(format!("the {k} query operator"))),
            k if k.starts_with('$') => {
                return Err(CommandError::bad_value(format!("unknown top level operator: {k}")));
            }
            _ => parts.push(Filter::Path(key.clone(), compile_conditions(value)?)),
        }
    }
    Ok(Filter::And(parts))
}

fn compile_conditions(value: &Bson) -> CommandResult<Vec<Cond>> {
    match value {
        Bson::Document(d) if d.keys().next().is_some_and(|k| k.starts_with('$')) => {
            d.iter().map(|(k, v)| compile_operator(k, v)).collect()
        }
        Bson::RegularExpression(_) => Err(unmodelled("matching regular expressions")),
        other => Ok(vec![Cond::Eq(other.clone())]),
    }
}

fn compile_operator(key: &str, value: &Bson) -> CommandResult<Cond> {
    let list = |value: &Bson| match value {
        Bson::Array(items) if items.iter().any(|i| matches!(i, Bson::RegularExpression(_))) => {
            Err(unmodelled("matching regular expressions"))
        }
        Bson::Array(items) => Ok(items.clone()),
        _ => Err(CommandError::bad_value(format!("{key} needs an array"))),
    };
    Ok(match key {
        "$eq" => Cond::Eq(value.clone()),
        "$ne" => Cond::Ne(value.clone()),
        "$gt" => Cond::Cmp(CmpOp::Gt, value.clone()),
        "$gte" => Cond::Cmp(CmpOp::Gte, value.clone()),
        "$lt" => Cond::Cmp(CmpOp::Lt, value.clone()),
        "$lte" => Cond::Cmp(CmpOp::Lte, value.clone()),
        "$in" => Cond::In(list(value)?),
        "$nin" => Cond::Nin(list(value)?),
        "$exists" => Cond::Exists(truthy(value).unwrap_or(true)),
        "$not" => match value {
            Bson::Document(d) if !d.is_empty() => {
                Cond::Not(d.iter().map(|(k, v)| compile_operator(k, v)).collect::<CommandResult<_>>()?)
            }
            Bson::RegularExpression(_) => return Err(unmodelled("matching regular expressions")),
            _ => return Err(CommandError::bad_value("$not needs a regex or a document")),
        },
        k if UNMODELLED_OPERATORS.contains(&k) => return Err(unmodelled(format!("the {k} query operator"))),
        k => return Err(CommandError::bad_value(format!("unknown operator: {k}"))),
    })
}

impl Filter {
    pub(super) fn matches(&self, doc: &Document) -> bool {
        match self {
            Filter::And(parts) => parts.iter().all(|p| p.matches(doc)),
            Filter::Or(parts) => parts.iter().any(|p| p.matches(doc)),
            Filter::Nor(parts) => !parts.iter().any(|p| p.matches(doc)),
            Filter::Path(path, conds) => {
                let values = values_at(doc, path);
                conds.iter().all(|c| c.matches(&values))
            }
        }
    }
}

impl Cond {
    fn matches(&self, values: &[&Bson]) -> bool {
        match self {
            Cond::Eq(v) => eq_any(values, v),
            Cond::Ne(v) => !eq_any(values, v),
            Cond::In(list) => list.iter().any(|v| eq_any(values, v)),
            Cond::Nin(list) => !list.iter().any(|v| eq_any(values, v)),
            Cond::Exists(want) => values.is_empty() != *want,
            Cond::Cmp(op, v) => flatten(values).any(|x| {
                bracket(x) == bracket(v) && {
                    let o = compare(x, v);
                    match op {
                        CmpOp::Gt => o == Ordering::Greater,
                        CmpOp::Gte => o != Ordering::Less,
                        CmpOp::Lt => o == Ordering::Less,
                        CmpOp::Lte => o != Ordering::Greater,
                    }
                }
            }),
            Cond::Not(conds) => !conds.iter().all(|c| c.matches(values)),
        }
    }
}

/// The values and their array elements.
fn flatten<'a>(values: &'a [&'a Bson]) -> impl Iterator<Item = &'a Bson> {
    values.iter().flat_map(|v| match v {
        Bson::Array(items) => std::iter::once(*v).chain(items.iter()).collect::<Vec<_>>(),
        other => vec![*other],
    })
}

/// Equality as a query sees it: a missing field equals `null`, and an
/// array matches when it or one of its elements equals the value.
fn eq_any(values: &[&Bson], target: &Bson) -> bool {
    if values.is_empty() {
        return matches!(target, Bson::Null);
    }
    flatten(values).any(|v| equal(v, target))
}

/// Every value at a dotted `path`, descending through arrays of documents.
pub(super) fn values_at<'a>(doc: &'a Document, path: &str) -> Vec<&'a Bson> {
    let parts: Vec<&str> = path.split('.').collect();
    let mut out = Vec::new();
    if let Some((first, rest)) = parts.split_first()
        && let Some(v) = doc.get(*first)
    {
        collect_values(v, rest, &mut out);
    }
    out
}

fn collect_values<'a>(value: &'a Bson, parts: &[&str], out: &mut Vec<&'a Bson>) {
    let Some((first, rest)) = parts.split_first() else {
        out.push(value);
        return;
    };
    match value {
        Bson::Document(d) => {
            if let Some(v) = d.get(*first) {
                collect_values(v, rest, out);
            }
        }
        Bson::Array(items) => {
            if let Ok(i) = first.parse::<usize>() {
                if let Some(v) = items.get(i) {
                    collect_values(v, rest, out);
                }
            } else {
                for item in items.iter().filter(|i| matches!(i, Bson::Document(_))) {
                    collect_values(item, parts, out);
                }
            }
        }
        _ => {}
    }
}

/// The server's canonical type order ("brackets"); values in different
/// brackets never compare equal.
fn bracket(v: &Bson) -> u8 {
    match v {
        Bson::MinKey => 0,
        Bson::Null | Bson::Undefined => 1,
        Bson::Int32(_) | Bson::Int64(_) | Bson::Double(_) | Bson::Decimal128(_) => 2,
        Bson::String(_) | Bson::Symbol(_) => 3,
        Bson::Document(_) => 4,
        Bson::Array(_) => 5,
        Bson::Binary(_) => 6,
        Bson::ObjectId(_) => 7,
        Bson::Boolean(_) => 8,
        Bson::DateTime(_) => 9,
        Bson::Timestamp(_) => 10,
        Bson::RegularExpression(_) => 11,
        Bson::MaxKey => 13,
        _ => 12,
    }
}

pub(super) fn number(v: &Bson) -> Option<(Option<i64>, f64)> {
    match v {
        Bson::Int32(i) => Some((Some(i64::from(*i)), f64::from(*i))),
        Bson::Int64(i) => Some((Some(*i), *i as f64)),
        Bson::Double(d) => Some((None, *d)),
        _ => None,
    }
}

/// Total order over BSON values, as the server sorts them.
fn compare(a: &Bson, b: &Bson) -> Ordering {
    let by_bracket = bracket(a).cmp(&bracket(b));
    if by_bracket != Ordering::Equal {
        return by_bracket;
    }
    match (a, b) {
        _ if number(a).is_some() && number(b).is_some() => match (number(a), number(b)) {
            (Some((Some(x), _)), Some((Some(y), _))) => x.cmp(&y),
            (Some((_, x)), Some((_, y))) => x.partial_cmp(&y).unwrap_or(Ordering::Equal),
            _ => Ordering::Equal,
        },
        (Bson::String(x), Bson::String(y)) => x.cmp(y),
        (Bson::Document(x), Bson::Document(y)) => {
            for ((kx, vx), (ky, vy)) in x.iter().zip(y.iter()) {
                let o = bracket(vx).cmp(&bracket(vy)).then_with(|| kx.cmp(ky)).then_with(|| compare(vx, vy));
                if o != Ordering::Equal {
                    return o;
                }
            }
            x.len().cmp(&y.len())
        }
        (Bson::Array(x), Bson::Array(y)) => {
            for (vx, vy) in x.iter().zip(y.iter()) {
                let o = compare(vx, vy);
                if o != Ordering::Equal {
                    return o;
                }
            }
            x.len().cmp(&y.len())
        }
        (Bson::Binary(x), Bson::Binary(y)) => x
            .bytes
            .len()
            .cmp(&y.bytes.len())
            .then_with(|| u8::from(x.subtype).cmp(&u8::from(y.subtype)))
            .then_with(|| x.bytes.cmp(&y.bytes)),
        (Bson::ObjectId(x), Bson::ObjectId(y)) => x.bytes().cmp(&y.bytes()),
        (Bson::Boolean(x), Bson::Boolean(y)) => x.cmp(y),
        (Bson::DateTime(x), Bson::DateTime(y)) => x.cmp(y),
        (Bson::Timestamp(x), Bson::Timestamp(y)) => (x.time, x.increment).cmp(&(y.time, y.increment)),
        (Bson::RegularExpression(x), Bson::RegularExpression(y)) => {
            x.pattern.cmp(&y.pattern).then_with(|| x.options.cmp(&y.options))
        }
        _ if a == b => Ordering::Equal,
        _ => format!("{a:?}").cmp(&format!("{b:?}")),
    }
}

pub(super) fn equal(a: &Bson, b: &Bson) -> bool {
    compare(a, b) == Ordering::Equal
}

pub(super) fn parse_sort(sort: Option<&Document>) -> CommandResult<Vec<(String, bool)>> {
    let Some(sort) = sort else { return Ok(Vec::new()) };
    sort.iter()
        .map(|(k, v)| match number(v) {
            Some((_, 1.0)) => Ok((k.clone(), true)),
            Some((_, -1.0)) => Ok((k.clone(), false)),
            _ if matches!(v, Bson::Document(_)) => Err(unmodelled("sorting by $meta")),
            _ => Err(CommandError::bad_value("$sort key ordering must be 1 (for ascending) or -1 (for descending)")),
        })
        .collect()
}

pub(super) fn compare_by(sort: &[(String, bool)], a: &Document, b: &Document) -> Ordering {
    for (path, ascending) in sort {
        let key = |d: &Document| values_at(d, path).first().map(|v| (*v).clone()).unwrap_or(Bson::Null);
        let o = compare(&key(a), &key(b));
        let o = if *ascending { o } else { o.reverse() };
        if o != Ordering::Equal {
            return o;
        }
    }
    Ordering::Equal
}
