//! The `classes` section: content classes and their staleness budgets.

use super::{valid_name, Errors};
use crate::config::classes::{ContentClass, NO_CLASS};
use crate::config::raw::RawClass;
use std::collections::{BTreeMap, HashSet};

/// `classes: {prices: {budget: 30s}, ...}`; absent: no classes. Every name written, valid or
/// not, goes into `declared`, so a route naming a broken class is not reported again.
pub(super) fn validate_classes(
    value: Option<serde_yaml::Value>,
    declared: &mut HashSet<String>,
    errs: &mut Errors,
) -> BTreeMap<String, ContentClass> {
    let Some(value) = value else {
        return BTreeMap::new();
    };
    if let serde_yaml::Value::Mapping(m) = &value {
        declared.extend(m.keys().filter_map(|k| k.as_str()).map(str::to_string));
    }
    let Some(raw) = errs.decode::<BTreeMap<String, RawClass>>("classes", value) else {
        return BTreeMap::new();
    };
    let mut out = BTreeMap::new();
    for (name, class) in raw {
        let path = format!("classes.{name}");
        if !valid_name(&name) {
            errs.push(
                &path,
                format!("{name:?} is not a class name (1-128 letters, digits, '-', '_', '.')"),
            );
            continue;
        }
        if name == NO_CLASS {
            errs.push(
                &path,
                format!("{NO_CLASS:?} is the metrics label of routes without a class"),
            );
            continue;
        }
        if class.budget.0.is_zero() {
            errs.push(format!("{path}.budget"), "must be more than 0s");
            continue;
        }
        out.insert(
            name,
            ContentClass {
                budget: class.budget.0,
            },
        );
    }
    out
}
