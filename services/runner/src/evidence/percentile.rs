//! Percentiles of the pack's timing figures, by the nearest-rank method: the p-th percentile of
//! n values is the value at rank ⌈p/100 · n⌉ of the sorted values (rank 1 for p = 0). Every
//! figure is then a time some finding really took, and an auditor can recompute it from the
//! findings table by hand; the median is p50 by the same rule (the lower middle of an even
//! count, not the mean of the two).

/// The `p`-th percentile (0–100) of `values` by nearest rank; `None` for no values.
pub fn percentile(values: &[i64], p: u32) -> Option<i64> {
    if values.is_empty() {
        return None;
    }
    let p = u64::from(p.min(100));
    let mut sorted = values.to_vec();
    sorted.sort_unstable();
    let n = sorted.len() as u64;
    // ⌈p·n/100⌉ in integers, at least 1.
    let rank = (p * n).div_ceil(100).max(1);
    Some(sorted[(rank - 1) as usize])
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::percentile;

    #[test]
    fn examples() {
        assert_eq!(percentile(&[], 50), None);
        assert_eq!(percentile(&[7], 0), Some(7));
        assert_eq!(percentile(&[7], 90), Some(7));
        // 1..=10: the median is the 5th value, p90 the 9th.
        let ten: Vec<i64> = (1..=10).rev().collect();
        assert_eq!(percentile(&ten, 50), Some(5));
        assert_eq!(percentile(&ten, 90), Some(9));
        assert_eq!(percentile(&ten, 100), Some(10));
        assert_eq!(percentile(&[15, 20, 35, 40, 50], 40), Some(20));
        assert_eq!(percentile(&[3, 1, 2], 50), Some(2));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(1024))]

        /// The definition of the nearest rank: the result is one of the values; at least p%
        /// of the values are at or below it, and fewer than p% are below it.
        #[test]
        fn the_result_is_the_nearest_rank(
            values in prop::collection::vec(any::<i64>(), 1..200),
            p in 0_u32..=100,
        ) {
            let result = percentile(&values, p).expect("values");
            prop_assert!(values.contains(&result));
            let n = values.len() as u64;
            let at_or_below = values.iter().filter(|value| **value <= result).count() as u64;
            let below = values.iter().filter(|value| **value < result).count() as u64;
            prop_assert!(100 * at_or_below >= u64::from(p) * n, "at least p% at or below");
            prop_assert!(100 * below < u64::from(p.max(1)) * n, "fewer than p% below");
        }

        #[test]
        fn it_grows_with_p_and_ignores_order(
            mut values in prop::collection::vec(-1_000_000_i64..1_000_000, 1..100),
            p in 0_u32..100,
            seed in any::<u64>(),
        ) {
            let low = percentile(&values, p);
            let high = percentile(&values, p + 1);
            prop_assert!(low <= high);
            // Any order of the same values gives the same figure.
            let shift = (seed as usize) % values.len();
            values.rotate_left(shift);
            values.reverse();
            prop_assert_eq!(percentile(&values, p), low);
        }

        #[test]
        fn the_extremes_are_the_minimum_and_maximum(
            values in prop::collection::vec(any::<i64>(), 1..100),
        ) {
            prop_assert_eq!(percentile(&values, 0), values.iter().min().copied());
            prop_assert_eq!(percentile(&values, 100), values.iter().max().copied());
        }
    }
}
