//! ES256 (ECDSA over P-256 with SHA-256) verification with precomputed tables.
//!
//! Verifying computes `R = u1·G + u2·Q` and compares `x(R) mod n` with `r`. The issuer's
//! key `Q` is long-lived and `G` is fixed, so both scalar multiplications use a fixed-base
//! table built once: for every `W`-bit window `i` of the scalar, the points
//! `k·2^(W·i)·P` for `k = 1..=2^(W-1)`. A scalar is recoded into signed digits in
//! `[-2^(W-1)+1, 2^(W-1)]`, and `u·P` is one addition (or subtraction) per non-zero digit,
//! with no doubling at all: ⌈257/W⌉ additions per multiplication, 89 for a whole
//! verification (W = 5 for the key, 7 for the generator), against p256's generic path of
//! two constant-time 256-bit multiplications (512 doublings, 128 additions, each window
//! read by a full table scan). Natively that is about 40 µs against 250 µs.
//!
//! The tables stay in projective form: p256 0.13 exposes no batch inversion, and one
//! inversion per point (≈ 20 additions' worth) would cost more to build than mixed
//! additions would save (≈ 13 %).
//!
//! Only public data passes through here (the key, the message, the signature), so the
//! table lookups are variable-time on purpose, and so is the inversion of `s`. All point
//! arithmetic is `p256`/`primeorder`'s own group law; nothing here touches field elements.

use std::sync::{Arc, OnceLock};

use p256::elliptic_curve::group::Group;
use p256::elliptic_curve::ops::{Invert, Reduce};
use p256::elliptic_curve::point::AffineCoordinates;
use p256::elliptic_curve::sec1::FromEncodedPoint;
use p256::elliptic_curve::{Field, PrimeField};
use p256::{AffinePoint, EncodedPoint, FieldBytes, ProjectivePoint, Scalar, U256};
use sha2::{Digest, Sha256};

use super::error::TokenError;

/// Window width for a key's table: 2^(W-1) points per window, ⌈257/W⌉ windows.
/// W = 5: 52 × 16 points, 78 KiB per key, built in about 0.3 ms natively.
const KEY_WINDOW: usize = 5;
/// Window width for the generator's table, built once per VM: 37 × 64 points, 222 KiB,
/// about 0.8 ms natively.
const GENERATOR_WINDOW: usize = 7;

/// A fixed-base table for one point.
#[derive(Clone)]
pub(crate) struct FixedBaseTable {
    window: usize,
    points: Vec<ProjectivePoint>,
}

impl FixedBaseTable {
    /// Builds the table of `base`: `windows(W) × 2^(W-1)` points, in projective form.
    pub(crate) fn new(base: ProjectivePoint, window: usize) -> Self {
        let half = 1usize << (window - 1);
        let windows = windows(window);
        let mut projective = Vec::with_capacity(windows * half);
        let mut b = base;
        for _ in 0..windows {
            let mut acc = b;
            projective.push(acc);
            for _ in 1..half {
                acc += b;
                projective.push(acc);
            }
            // acc = 2^(W-1)·b, so the next window's base 2^W·b is one doubling away.
            b = Group::double(&acc);
        }
        Self {
            window,
            points: projective,
        }
    }

    /// `k·base`, by signed-digit recoding of `k` and one addition per non-zero digit.
    /// `None` only if the table is shorter than its window says (never, by construction).
    pub(crate) fn mul(&self, k: &Scalar) -> Option<ProjectivePoint> {
        let w = self.window;
        let half = 1u32 << (w - 1);
        let mask = (1u32 << w) - 1;
        // Little-endian bytes, with spare zero bytes so every window read stays in range.
        let mut le = [0u8; 34];
        for (dst, src) in le.iter_mut().zip(k.to_bytes().iter().rev()) {
            *dst = *src;
        }
        let mut acc = ProjectivePoint::IDENTITY;
        let mut carry = 0u32;
        for i in 0..windows(w) {
            let bit = i * w;
            let lo = u32::from(le.get(bit / 8).copied().unwrap_or(0));
            let hi = u32::from(le.get(bit / 8 + 1).copied().unwrap_or(0));
            let v = (((hi << 8) | lo) >> (bit % 8) & mask) + carry;
            let (magnitude, negative) = if v > half {
                carry = 1;
                ((1u32 << w) - v, true)
            } else {
                carry = 0;
                (v, false)
            };
            if magnitude != 0 {
                let idx = i * (half as usize) + (magnitude as usize - 1);
                let p = self.points.get(idx)?;
                if negative {
                    acc -= p;
                } else {
                    acc += p;
                }
            }
        }
        // windows(w) leaves room for the last carry, so none is left over.
        (carry == 0).then_some(acc)
    }

    /// Heap bytes held by the table.
    pub(crate) fn heap_bytes(&self) -> usize {
        self.points.len() * std::mem::size_of::<ProjectivePoint>()
    }
}

/// ⌈257/W⌉: enough signed windows for a 256-bit scalar plus the recoding's final carry.
const fn windows(w: usize) -> usize {
    257usize.div_ceil(w)
}

fn generator_table() -> &'static FixedBaseTable {
    static TABLE: OnceLock<FixedBaseTable> = OnceLock::new();
    TABLE.get_or_init(|| FixedBaseTable::new(ProjectivePoint::GENERATOR, GENERATOR_WINDOW))
}

/// Builds the generator's table now rather than on the first verification (it is shared
/// by every key in the VM). Idempotent.
pub fn warm_up() {
    let _ = generator_table();
}

/// An ES256 public key with its precomputed table.
#[derive(Clone)]
pub struct Es256Key {
    point: AffinePoint,
    table: Arc<FixedBaseTable>,
}

impl std::fmt::Debug for Es256Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Es256Key")
    }
}

impl Es256Key {
    /// The key at affine coordinates `(x, y)` (32 bytes each, big-endian), or `None` when
    /// the point is not on P-256 (or is the identity).
    pub fn from_coordinates(x: &[u8; 32], y: &[u8; 32]) -> Option<Self> {
        let encoded = EncodedPoint::from_affine_coordinates(
            &FieldBytes::from(*x),
            &FieldBytes::from(*y),
            false,
        );
        let point: AffinePoint = Option::from(AffinePoint::from_encoded_point(&encoded))?;
        if bool::from(point.is_identity()) {
            return None;
        }
        Some(Self::from_point(point))
    }

    fn from_point(point: AffinePoint) -> Self {
        warm_up();
        let table = Arc::new(FixedBaseTable::new(point.into(), KEY_WINDOW));
        Self { point, table }
    }

    /// Heap bytes held by the key's table.
    pub fn table_bytes(&self) -> usize {
        self.table.heap_bytes()
    }

    /// Verifies a JWS ES256 signature: exactly 64 bytes `r ‖ s` (IEEE P1363), both in
    /// `[1, n-1]`. High-S signatures are valid, as JOSE says.
    pub fn verify(&self, message: &[u8], signature: &[u8]) -> Result<(), TokenError> {
        let (r, s) = parse_signature(signature)?;
        let z = <Scalar as Reduce<U256>>::reduce_bytes(&Sha256::digest(message));
        let s_inv: Scalar =
            Option::from(s.invert_vartime()).ok_or(TokenError::MalformedSignature)?;
        let u1 = z * s_inv;
        let u2 = r * s_inv;
        let g = generator_table().mul(&u1).ok_or(TokenError::BadSignature)?;
        let q = self.table.mul(&u2).ok_or(TokenError::BadSignature)?;
        let point = (g + q).to_affine();
        if bool::from(point.is_identity()) {
            return Err(TokenError::BadSignature);
        }
        let x = <Scalar as Reduce<U256>>::reduce_bytes(&point.x());
        if x == r {
            Ok(())
        } else {
            Err(TokenError::BadSignature)
        }
    }

    /// Verifies with p256's own generic arithmetic (two full scalar multiplications), for
    /// comparison in tests and benchmarks. Same acceptance rules as [`Es256Key::verify`].
    pub fn verify_without_tables(
        &self,
        message: &[u8],
        signature: &[u8],
    ) -> Result<(), TokenError> {
        let (r, s) = parse_signature(signature)?;
        let z = <Scalar as Reduce<U256>>::reduce_bytes(&Sha256::digest(message));
        let s_inv: Scalar = Option::from(s.invert()).ok_or(TokenError::MalformedSignature)?;
        let q = ProjectivePoint::from(self.point);
        let point = (ProjectivePoint::GENERATOR * (z * s_inv) + q * (r * s_inv)).to_affine();
        if bool::from(point.is_identity()) {
            return Err(TokenError::BadSignature);
        }
        let x = <Scalar as Reduce<U256>>::reduce_bytes(&point.x());
        if x == r {
            Ok(())
        } else {
            Err(TokenError::BadSignature)
        }
    }
}

/// `r ‖ s`, each a canonical big-endian scalar in `[1, n-1]`.
fn parse_signature(signature: &[u8]) -> Result<(Scalar, Scalar), TokenError> {
    let sig: &[u8; 64] = signature
        .try_into()
        .map_err(|_| TokenError::MalformedSignature)?;
    let (r, s) = sig.split_at(32);
    Ok((scalar(r)?, scalar(s)?))
}

fn scalar(bytes: &[u8]) -> Result<Scalar, TokenError> {
    let arr: [u8; 32] = bytes
        .try_into()
        .map_err(|_| TokenError::MalformedSignature)?;
    let k: Scalar = Option::from(Scalar::from_repr(FieldBytes::from(arr)))
        .ok_or(TokenError::MalformedSignature)?;
    if bool::from(k.is_zero()) {
        return Err(TokenError::MalformedSignature);
    }
    Ok(k)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scalar_from_u64(v: u64) -> Scalar {
        Scalar::from(v)
    }

    #[test]
    fn table_multiplication_agrees_with_p256() {
        let g = ProjectivePoint::GENERATOR;
        for w in [4, 5, 6, 7, 8] {
            let t = FixedBaseTable::new(g, w);
            let mut k = scalar_from_u64(0x1234_5678_9abc_def1);
            for _ in 0..40 {
                assert_eq!(t.mul(&k).unwrap(), g * k, "window {w}");
                k = k * k + Scalar::ONE;
            }
            for special in [Scalar::ZERO, Scalar::ONE, -Scalar::ONE, -Scalar::from(2u64)] {
                assert_eq!(t.mul(&special).unwrap(), g * special, "window {w}");
            }
        }
    }

    #[test]
    fn tables_agree_with_p256_ecdsa_on_valid_high_s_and_tampered_signatures() {
        use p256::ecdsa::signature::{Signer, Verifier};
        use p256::ecdsa::{Signature, SigningKey, VerifyingKey};
        for i in 1..=16u64 {
            let sk = SigningKey::from_bytes(&Scalar::from(i * 7919 + 3).to_bytes()).unwrap();
            let vk = VerifyingKey::from(&sk);
            let key = Es256Key::from_point(*vk.as_affine());
            let msg = format!("message {i}");
            let sig: Signature = sk.sign(msg.as_bytes());
            let (r, s) = sig.split_scalars();
            let twin = Signature::from_scalars(r.to_bytes(), (-*s).to_bytes()).unwrap();
            for candidate in [sig, twin] {
                let bytes = candidate.to_bytes();
                assert_eq!(key.verify(msg.as_bytes(), &bytes), Ok(()));
                assert_eq!(key.verify_without_tables(msg.as_bytes(), &bytes), Ok(()));
                for pos in [0, 7, 31, 32, 50, 63] {
                    let mut bad = bytes.to_vec();
                    bad[pos] ^= 0x41;
                    let theirs = Signature::from_slice(&bad)
                        .map(|s| vk.verify(msg.as_bytes(), &s).is_ok())
                        .unwrap_or(false);
                    assert_eq!(key.verify(msg.as_bytes(), &bad).is_ok(), theirs);
                    assert!(!theirs);
                }
            }
            assert!(key.verify(b"another message", &sig.to_bytes()).is_err());
        }
    }

    #[test]
    fn generator_table_has_the_announced_size() {
        assert_eq!(windows(7) * 64, generator_table().points.len());
        assert_eq!(windows(5), 52);
        assert_eq!(windows(4), 65);
    }
}
