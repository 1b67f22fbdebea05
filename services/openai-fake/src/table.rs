//! The fake's storage for every cursor list: rows found by id in O(1), kept in list order, and
//! paged from an `after`/`before` cursor in O(page) (plus the rows a filter skips), so a walk
//! over an organization of 100,000 keys costs what the pages it reads cost, not the whole list
//! per request.

use std::collections::{BTreeMap, HashMap};

use serde_json::{Value, json};

use super::api::ApiError;

/// A row's place in its list: a primary order (a timestamp, or 0 for insertion order) and the
/// fake's sequence number, which makes it unique.
pub(super) type Order = (i64, u64);

/// An object that lives in a [`Table`].
pub(super) trait Row {
    /// Its id, which cursors name.
    fn id(&self) -> &str;
    /// Its place in the list; never changes while the row is in the table.
    fn order(&self) -> Order;
}

/// The rows of one list.
pub(super) struct Table<T> {
    rows: HashMap<String, T>,
    order: BTreeMap<Order, String>,
    /// Where removed rows stood, so a cursor naming one still works (a client that deleted the
    /// last object of a page pages on from it).
    buried: HashMap<String, Order>,
}

impl<T> Default for Table<T> {
    fn default() -> Table<T> {
        Table {
            rows: HashMap::new(),
            order: BTreeMap::new(),
            buried: HashMap::new(),
        }
    }
}

/// What a cursor list request asked for.
pub(super) struct PageRequest<'a> {
    pub(super) limit: usize,
    pub(super) after: Option<&'a str>,
    pub(super) before: Option<&'a str>,
    /// Newest (highest order) first.
    pub(super) descending: bool,
    /// Only rows whose primary order is within these inclusive bounds (audit logs'
    /// `effective_at[gt|gte|lt|lte]`), so a time filter narrows the walk instead of skipping.
    pub(super) within: (Option<i64>, Option<i64>),
    /// The fake's broken-pagination switch: the first page, `has_more` always true.
    pub(super) broken: bool,
}

impl PageRequest<'_> {
    /// A request for `limit` rows after `after`, ascending, no other bound.
    pub(super) fn after(limit: usize, after: Option<&str>, broken: bool) -> PageRequest<'_> {
        PageRequest {
            limit,
            after,
            before: None,
            descending: false,
            within: (None, None),
            broken,
        }
    }
}

impl<T: Row> Table<T> {
    /// Adds a row; `false` (and nothing added) when its id is taken.
    pub(super) fn insert(&mut self, row: T) -> bool {
        if self.rows.contains_key(row.id()) {
            return false;
        }
        let id = row.id().to_owned();
        self.buried.remove(&id);
        self.order.insert(row.order(), id.clone());
        self.rows.insert(id, row);
        true
    }

    pub(super) fn get(&self, id: &str) -> Option<&T> {
        self.rows.get(id)
    }

    /// The row, to change anything but its id and order.
    pub(super) fn get_mut(&mut self, id: &str) -> Option<&mut T> {
        self.rows.get_mut(id)
    }

    pub(super) fn contains(&self, id: &str) -> bool {
        self.rows.contains_key(id)
    }

    pub(super) fn len(&self) -> usize {
        self.rows.len()
    }

    /// Removes a row and remembers where it stood.
    pub(super) fn remove(&mut self, id: &str) -> Option<T> {
        let row = self.rows.remove(id)?;
        self.order.remove(&row.order());
        self.buried.insert(id.to_owned(), row.order());
        Some(row)
    }

    /// Every row in list order.
    pub(super) fn iter(&self) -> impl DoubleEndedIterator<Item = &T> {
        self.order.values().filter_map(|id| self.rows.get(id))
    }

    /// Every row, in no particular order, to change them.
    pub(super) fn values_mut(&mut self) -> impl Iterator<Item = &mut T> {
        self.rows.values_mut()
    }

    /// A `{object: "list", data, first_id, last_id, has_more}` page of the rows `visible` keeps,
    /// each rendered by `render`. `after`/`before` name a row (or one removed since); an unknown
    /// cursor is a 400.
    pub(super) fn page(
        &self,
        request: &PageRequest<'_>,
        visible: impl Fn(&T) -> bool,
        render: impl Fn(&T) -> Value,
    ) -> Result<Value, ApiError> {
        let position = |cursor: &str, param: &str| -> Result<Order, ApiError> {
            self.rows
                .get(cursor)
                .map(Row::order)
                .or_else(|| self.buried.get(cursor).copied())
                .ok_or_else(|| {
                    ApiError::invalid(param, format!("No object with id '{cursor}' to page from."))
                })
        };
        let (page, has_more): (Vec<&T>, bool) = if request.broken {
            let rows = self.walk(
                (Some((i64::MIN, 0)), Some((i64::MAX, u64::MAX))),
                request.descending,
            );
            (
                rows.filter(|row| visible(row))
                    .take(request.limit)
                    .collect(),
                true,
            )
        } else {
            let after = request.after.map(|c| position(c, "after")).transpose()?;
            let before = request.before.map(|c| position(c, "before")).transpose()?;
            // In ascending terms: rows above `low` and below `high`.
            let (low, high) = if request.descending {
                (before, after)
            } else {
                (after, before)
            };
            // `None`: nothing can be above (below) the cursor.
            let low = low.map_or(Some((i64::MIN, 0)), next);
            let high = high.map_or(Some((i64::MAX, u64::MAX)), previous);
            let (within_low, within_high) = request.within;
            let low = low.map(|low| within_low.map_or(low, |at| low.max((at, 0))));
            let high = high.map(|high| within_high.map_or(high, |at| high.min((at, u64::MAX))));
            // Only `before`: the page is the `limit` rows nearest to it, listed in order.
            let toward_before = request.before.is_some() && request.after.is_none();
            let mut rows: Vec<&T> = self
                .walk((low, high), request.descending != toward_before)
                .filter(|row| visible(row))
                .take(request.limit + 1)
                .collect();
            let more = rows.len() > request.limit;
            rows.truncate(request.limit);
            if toward_before {
                rows.reverse();
            }
            (rows, more)
        };
        Ok(json!({
            "object": "list",
            "data": page.iter().map(|row| render(row)).collect::<Vec<_>>(),
            "first_id": page.first().map(|row| row.id()),
            "last_id": page.last().map(|row| row.id()),
            "has_more": has_more,
        }))
    }

    /// The rows between two inclusive bounds, ascending or descending; none when the bounds
    /// cross.
    fn walk(
        &self,
        (low, high): (Option<Order>, Option<Order>),
        descending: bool,
    ) -> Box<dyn Iterator<Item = &T> + '_> {
        let (Some(low), Some(high)) = (low, high) else {
            return Box::new(std::iter::empty());
        };
        if low > high {
            return Box::new(std::iter::empty());
        }
        let ids = self.order.range(low..=high).map(|(_, id)| id);
        let rows = move |id: &String| self.rows.get(id);
        if descending {
            Box::new(ids.rev().filter_map(rows))
        } else {
            Box::new(ids.filter_map(rows))
        }
    }
}

/// The smallest order after `order`.
fn next((at, seq): Order) -> Option<Order> {
    match seq.checked_add(1) {
        Some(seq) => Some((at, seq)),
        None => at.checked_add(1).map(|at| (at, 0)),
    }
}

/// The largest order before `order`.
fn previous((at, seq): Order) -> Option<Order> {
    match seq.checked_sub(1) {
        Some(seq) => Some((at, seq)),
        None => at.checked_sub(1).map(|at| (at, u64::MAX)),
    }
}

#[cfg(test)]
mod tests {
    //! `Table::page` against the obvious model: sort everything, drop what the cursors and
    //! bounds exclude, filter, take.

    use proptest::prelude::*;
    use serde_json::{Value, json};

    use super::{Order, PageRequest, Row, Table};

    #[derive(Debug, Clone)]
    struct Item {
        id: String,
        order: Order,
        visible: bool,
    }

    impl Row for Item {
        fn id(&self) -> &str {
            &self.id
        }
        fn order(&self) -> Order {
            self.order
        }
    }

    /// The page the model expects: `(ids, has_more)`, or `None` for an unknown cursor.
    fn model(
        items: &[Item],
        removed: &[Item],
        request: &PageRequest<'_>,
    ) -> Option<(Vec<String>, bool)> {
        let position = |cursor: &str| {
            items
                .iter()
                .chain(removed)
                .find(|item| item.id == cursor)
                .map(|item| item.order)
        };
        let after = match request.after {
            Some(cursor) => Some(position(cursor)?),
            None => None,
        };
        let before = match request.before {
            Some(cursor) => Some(position(cursor)?),
            None => None,
        };
        let mut listed: Vec<&Item> = items.iter().collect();
        listed.sort_by_key(|item| item.order);
        if request.descending {
            listed.reverse();
        }
        let precedes = |a: Order, b: Order| if request.descending { a > b } else { a < b };
        let window: Vec<&Item> = listed
            .into_iter()
            .filter(|item| item.visible)
            .filter(|item| after.is_none_or(|a| precedes(a, item.order)))
            .filter(|item| before.is_none_or(|b| precedes(item.order, b)))
            .filter(|item| request.within.0.is_none_or(|low| item.order.0 >= low))
            .filter(|item| request.within.1.is_none_or(|high| item.order.0 <= high))
            .collect();
        let more = window.len() > request.limit;
        let page: Vec<String> = if before.is_some() && after.is_none() {
            let skip = window.len().saturating_sub(request.limit);
            window
                .iter()
                .skip(skip)
                .map(|item| item.id.clone())
                .collect()
        } else {
            window
                .iter()
                .take(request.limit)
                .map(|item| item.id.clone())
                .collect()
        };
        Some((page, more))
    }

    fn item() -> impl Strategy<Value = (i64, bool)> {
        (-3i64..4, proptest::bool::weighted(0.8))
    }

    proptest! {
        #[test]
        fn pages_like_the_model(
            rows in proptest::collection::vec(item(), 0..40),
            removals in proptest::collection::vec(any::<prop::sample::Index>(), 0..5),
            limit in 1usize..8,
            after in proptest::option::of(any::<prop::sample::Index>()),
            before in proptest::option::of(any::<prop::sample::Index>()),
            descending in any::<bool>(),
            low in proptest::option::of(-3i64..4),
            high in proptest::option::of(-3i64..4),
        ) {
            let mut items: Vec<Item> = rows
                .iter()
                .enumerate()
                .map(|(seq, (at, visible))| Item {
                    id: format!("obj_{seq}"),
                    order: (*at, seq as u64 + 1),
                    visible: *visible,
                })
                .collect();
            let mut table = Table::default();
            for item in &items {
                prop_assert!(table.insert(item.clone()));
            }
            let mut removed = Vec::new();
            for index in removals {
                if items.is_empty() {
                    break;
                }
                let gone = items.remove(index.index(items.len()));
                prop_assert!(table.remove(&gone.id).is_some());
                removed.push(gone);
            }
            let every: Vec<String> = items
                .iter()
                .chain(&removed)
                .map(|item| item.id.clone())
                .chain(["obj_unknown".to_owned()])
                .collect();
            let after = after.map(|index| every[index.index(every.len())].clone());
            let before = before.map(|index| every[index.index(every.len())].clone());
            let request = PageRequest {
                limit,
                after: after.as_deref(),
                before: before.as_deref(),
                descending,
                within: (low, high),
                broken: false,
            };
            let page = table.page(&request, |item| item.visible, |item| json!({"id": item.id}));
            match model(&items, &removed, &request) {
                None => prop_assert!(page.is_err()),
                Some((ids, more)) => {
                    let page = page.expect("a page");
                    let listed: Vec<String> = page["data"]
                        .as_array()
                        .expect("data")
                        .iter()
                        .map(|item| item["id"].as_str().expect("id").to_owned())
                        .collect();
                    prop_assert_eq!(&listed, &ids);
                    prop_assert_eq!(&page["has_more"], &json!(more));
                    prop_assert_eq!(
                        &page["first_id"],
                        &ids.first().map_or(Value::Null, |id| json!(id))
                    );
                    prop_assert_eq!(
                        &page["last_id"],
                        &ids.last().map_or(Value::Null, |id| json!(id))
                    );
                }
            }
        }
    }
}
