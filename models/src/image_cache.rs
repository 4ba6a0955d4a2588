//! Image embeddings kept between prompts: encoding an image costs seconds on a CPU, and a chat,
//! a server or a caption run often sees the same picture again. Keyed by a hash of the decoded
//! pixels (and their size); the cache belongs to one pipeline, so to one vision tower. Least
//! recently used entries go first when the memory cap would be passed.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hash, Hasher, RandomState};
use std::sync::{Arc, Mutex};

use crate::image::RgbImage;

/// The embeddings of one image: `rows × cols` values, row-major.
#[derive(Clone, Debug)]
pub struct CachedEmbedding {
    /// LLM positions the image takes.
    pub rows: usize,
    /// The LLM's hidden size.
    pub cols: usize,
    /// The values, shared with the cache.
    pub data: Arc<Vec<f32>>,
}

/// Hits and misses so far, and what the cache holds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CacheStats {
    /// Lookups answered from the cache.
    pub hits: u64,
    /// Lookups that had to encode.
    pub misses: u64,
    /// Images held.
    pub entries: usize,
    /// Bytes of embeddings held.
    pub bytes: usize,
}

/// Identifies an image by its pixels: a keyed SipHash (random keys per process, so a request
/// cannot be crafted to collide with another's image) of the size and the RGB bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ImageKey {
    hash: u64,
    width: u32,
    height: u32,
}

struct Entry {
    value: CachedEmbedding,
    last_used: u64,
}

struct Inner {
    entries: HashMap<ImageKey, Entry>,
    bytes: usize,
    clock: u64,
    hits: u64,
    misses: u64,
}

/// An LRU cache of image embeddings, at most `capacity` bytes (0: off). Shared between threads.
pub struct EmbeddingCache {
    capacity: usize,
    hasher: RandomState,
    inner: Mutex<Inner>,
}

impl EmbeddingCache {
    /// A cache of at most `capacity` bytes of embeddings; 0 keeps nothing.
    pub fn new(capacity: usize) -> Self {
        EmbeddingCache {
            capacity,
            hasher: RandomState::new(),
            inner: Mutex::new(Inner {
                entries: HashMap::new(),
                bytes: 0,
                clock: 0,
                hits: 0,
                misses: 0,
            }),
        }
    }

    /// Whether anything is kept at all (a capacity above 0).
    pub fn enabled(&self) -> bool {
        self.capacity > 0
    }

    /// The key of `image`.
    pub fn key(&self, image: &RgbImage) -> ImageKey {
        let mut h = self.hasher.build_hasher();
        image.width.hash(&mut h);
        image.height.hash(&mut h);
        h.write(&image.data);
        ImageKey {
            hash: h.finish(),
            width: image.width,
            height: image.height,
        }
    }

    /// The embeddings of the image with `key`, if held (counted as a hit or a miss).
    pub fn get(&self, key: &ImageKey) -> Option<CachedEmbedding> {
        let mut inner = self.lock();
        inner.clock += 1;
        let now = inner.clock;
        match inner.entries.get_mut(key) {
            Some(e) => {
                e.last_used = now;
                let value = e.value.clone();
                inner.hits += 1;
                Some(value)
            }
            None => {
                inner.misses += 1;
                None
            }
        }
    }

    /// Keeps `value` for `key`, dropping the least recently used entries to stay within the
    /// capacity; a value larger than the whole capacity is not kept.
    pub fn insert(&self, key: ImageKey, value: CachedEmbedding) {
        let size = value.data.len() * std::mem::size_of::<f32>();
        if size > self.capacity {
            return;
        }
        let mut inner = self.lock();
        if let Some(old) = inner.entries.remove(&key) {
            inner.bytes -= old.value.data.len() * std::mem::size_of::<f32>();
        }
        while inner.bytes + size > self.capacity {
            let Some((&oldest, _)) = inner.entries.iter().min_by_key(|(_, e)| e.last_used) else {
                break;
            };
            let e = inner.entries.remove(&oldest).expect("found above");
            inner.bytes -= e.value.data.len() * std::mem::size_of::<f32>();
        }
        inner.clock += 1;
        let last_used = inner.clock;
        inner.bytes += size;
        inner.entries.insert(key, Entry { value, last_used });
    }

    /// Hits, misses and contents so far.
    pub fn stats(&self) -> CacheStats {
        let inner = self.lock();
        CacheStats {
            hits: inner.hits,
            misses: inner.misses,
            entries: inner.entries.len(),
            bytes: inner.bytes,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves consistent data (every update is a few plain
        // assignments); keep using it.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(fill: u8) -> RgbImage {
        RgbImage::new(4, 3, [fill, 0, 0])
    }

    fn embedding(values: usize) -> CachedEmbedding {
        CachedEmbedding {
            rows: values,
            cols: 1,
            data: Arc::new(vec![0.5; values]),
        }
    }

    #[test]
    fn the_least_recently_used_image_goes_first_and_stats_count() {
        // Room for two embeddings of 10 values.
        let cache = EmbeddingCache::new(80);
        let (a, b, c) = (
            cache.key(&image(1)),
            cache.key(&image(2)),
            cache.key(&image(3)),
        );
        assert_ne!(a, b);
        assert_eq!(a, cache.key(&image(1)), "the same pixels, the same key");
        assert!(cache.get(&a).is_none());
        cache.insert(a, embedding(10));
        cache.insert(b, embedding(10));
        assert!(cache.get(&a).is_some(), "a is now the most recent");
        cache.insert(c, embedding(10));
        assert!(cache.get(&b).is_none(), "b, the least recent, was dropped");
        assert!(cache.get(&a).is_some() && cache.get(&c).is_some());
        let s = cache.stats();
        assert_eq!((s.hits, s.misses, s.entries, s.bytes), (3, 2, 2, 80));
        // Too large for the whole cache: not kept, nothing dropped.
        cache.insert(b, embedding(30));
        assert_eq!(cache.stats().entries, 2);
        // Capacity 0 keeps nothing.
        let off = EmbeddingCache::new(0);
        off.insert(a, embedding(1));
        assert!(off.get(&a).is_none());
    }

    #[test]
    fn a_different_size_with_the_same_bytes_is_another_image() {
        let cache = EmbeddingCache::new(0);
        let wide = RgbImage::new(6, 2, [9, 9, 9]);
        let tall = RgbImage::new(2, 6, [9, 9, 9]);
        assert_eq!(wide.data, tall.data);
        assert_ne!(cache.key(&wide), cache.key(&tall));
    }
}
