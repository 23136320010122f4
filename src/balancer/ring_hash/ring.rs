//! The ring: xxHash64 points of every endpoint, sorted, searched in
//! O(log n) (gRFC A42, grpc-go's `balancer/ringhash/ring.go`).

use xxhash_rust::xxh64::xxh64;

/// One point on the ring: a hash and the endpoint (by index) it belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Point {
    pub(crate) hash: u64,
    pub(crate) endpoint: u32,
}

/// The points of every endpoint, sorted by hash.
#[derive(Debug, Default)]
pub(crate) struct Ring {
    points: Box<[Point]>,
}

/// What the ring is made of: each endpoint's hash key (its address or
/// `hash_key`) and weight, by endpoint index.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct RingInput<'a> {
    pub(crate) key: &'a str,
    pub(crate) weight: u32,
}

impl Ring {
    /// The ring of `endpoints` as A42 builds it: weights are normalized,
    /// the ring is scaled so that the lightest endpoint gets a whole number
    /// of points (at least `min_size` points in all, at most `max_size`),
    /// and endpoint `e`'s `i`-th point is `xxh64("{key}_{i}", 0)`, so an
    /// endpoint keeps its points when others come and go.
    pub(crate) fn new(endpoints: &[RingInput<'_>], min_size: u64, max_size: u64) -> Ring {
        let total: f64 = endpoints.iter().map(|e| f64::from(e.weight.max(1))).sum();
        if endpoints.is_empty() || total <= 0.0 {
            return Ring::default();
        }
        let normalized: Vec<f64> = endpoints
            .iter()
            .map(|e| f64::from(e.weight.max(1)) / total)
            .collect();
        let min_weight = normalized.iter().copied().fold(1.0, f64::min);
        let scale = ((min_weight * min_size as f64).ceil() / min_weight).min(max_size as f64);
        let mut points = Vec::with_capacity(scale.ceil() as usize);
        let (mut current, mut target) = (0.0f64, 0.0f64);
        // grpc-go visits endpoints sorted by key, so the ring does not
        // depend on the resolver's order.
        let mut order: Vec<usize> = (0..endpoints.len()).collect();
        order.sort_by(|&a, &b| endpoints[a].key.cmp(endpoints[b].key));
        // One buffer for every point's "{key}_{n}": the key and `_` are
        // written once per endpoint, only the index's digits per point.
        let mut name = Vec::new();
        let mut digits = itoa::Buffer::new();
        for i in order {
            target += scale * normalized[i];
            name.clear();
            name.extend_from_slice(endpoints[i].key.as_bytes());
            name.push(b'_');
            let prefix = name.len();
            let mut n = 0u64;
            while current < target {
                name.truncate(prefix);
                name.extend_from_slice(digits.format(n).as_bytes());
                points.push(Point {
                    hash: xxh64(&name, 0),
                    endpoint: i as u32,
                });
                n += 1;
                current += 1.0;
            }
        }
        points.sort_unstable_by_key(|p| p.hash);
        Ring {
            points: points.into_boxed_slice(),
        }
    }

    /// The index of the first point at or after `hash` (wrapping to the
    /// first point). `None` for an empty ring.
    #[inline]
    pub(crate) fn find(&self, hash: u64) -> Option<usize> {
        if self.points.is_empty() {
            return None;
        }
        let i = self.points.partition_point(|p| p.hash < hash);
        Some(if i == self.points.len() { 0 } else { i })
    }

    /// The points, sorted by hash.
    pub(crate) fn points(&self) -> &[Point] {
        &self.points
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inputs<'a>(keys: &[&'a str], weights: &[u32]) -> Vec<RingInput<'a>> {
        keys.iter()
            .zip(weights)
            .map(|(key, &weight)| RingInput { key, weight })
            .collect()
    }

    fn count(ring: &Ring, endpoint: u32) -> usize {
        ring.points()
            .iter()
            .filter(|p| p.endpoint == endpoint)
            .count()
    }

    #[test]
    fn equal_weights_share_the_ring_and_the_size_respects_the_bounds() {
        let ring = Ring::new(&inputs(&["a:1", "b:1", "c:1"], &[1, 1, 1]), 1024, 4096);
        // Scale ceil(1024/3)*3 = 1026: 342 points each.
        assert_eq!(ring.points().len(), 1026);
        assert!((0..3).all(|e| count(&ring, e) == 342));
        assert!(ring.points().windows(2).all(|w| w[0].hash <= w[1].hash));
        let small = Ring::new(&inputs(&["a:1", "b:1"], &[1, 1]), 4, 4);
        assert_eq!(small.points().len(), 4);
    }

    #[test]
    fn weights_scale_the_points() {
        // The lightest gets ceil(1024/6) = 171 points, the others in
        // proportion.
        let ring = Ring::new(&inputs(&["a:1", "b:1", "c:1"], &[1, 2, 3]), 1024, 4096);
        let (a, b, c) = (count(&ring, 0), count(&ring, 1), count(&ring, 2));
        assert_eq!((a, b, c), (171, 342, 513));
        // The max size caps the scale: the weights still hold roughly.
        let capped = Ring::new(&inputs(&["a:1", "b:1", "c:1"], &[1, 2, 3]), 8192, 4096);
        assert_eq!(capped.points().len(), 4096);
        let a = count(&capped, 0) as f64;
        assert!((count(&capped, 2) as f64 / a - 3.0).abs() < 0.01);
    }

    #[test]
    fn the_points_are_xxhash64_of_key_underscore_index() {
        let ring = Ring::new(&inputs(&["10.0.0.1:80"], &[1]), 2, 2);
        let mut want = [xxh64(b"10.0.0.1:80_0", 0), xxh64(b"10.0.0.1:80_1", 0)];
        want.sort_unstable();
        let got: Vec<u64> = ring.points().iter().map(|p| p.hash).collect();
        assert_eq!(got, want);
        // The reference value of xxHash64 (seed 0) for "abc".
        assert_eq!(xxh64(b"abc", 0), 0x44bc2cf5ad770999);
    }

    #[test]
    fn find_is_the_first_point_at_or_after_the_hash_wrapping_around() {
        let ring = Ring::new(&inputs(&["a:1", "b:1"], &[1, 1]), 16, 16);
        let points = ring.points();
        assert_eq!(ring.find(0), Some(0));
        assert_eq!(ring.find(points[3].hash), Some(3));
        assert_eq!(ring.find(points[3].hash + 1), Some(4));
        assert_eq!(ring.find(u64::MAX), Some(0), "past the last point wraps");
        assert_eq!(Ring::default().find(7), None);
    }

    /// Not a check of speed: prints how long the largest ring takes to
    /// build (`cargo test [--release] --lib -- --ignored
    /// the_largest_ring --nocapture`), the figure the module docs give.
    #[test]
    #[ignore = "a measurement: 8,388,608 points take seconds in a debug build"]
    fn the_largest_ring_has_every_point_and_prints_its_build_time() {
        let keys: Vec<String> = (0..3).map(|i| format!("10.0.0.{i}:50051")).collect();
        let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
        let size = crate::balancer::ring_hash::MAX_RING_SIZE;
        let start = std::time::Instant::now();
        let ring = Ring::new(&inputs(&keys, &[1, 1, 1]), size, size);
        println!("{size} points in {:?}", start.elapsed());
        assert_eq!(ring.points().len() as u64, size);
    }

    #[test]
    fn the_ring_does_not_depend_on_the_endpoint_order() {
        let one = Ring::new(&inputs(&["a:1", "b:1"], &[1, 2]), 64, 64);
        let two = Ring::new(&inputs(&["b:1", "a:1"], &[2, 1]), 64, 64);
        let hashes = |r: &Ring| r.points().iter().map(|p| p.hash).collect::<Vec<_>>();
        assert_eq!(hashes(&one), hashes(&two));
    }
}
