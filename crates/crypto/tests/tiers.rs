//! Tier keys step down one way, reproducing vectors computed independently
//! (Python hmac/hashlib HKDF) for master key bytes 0x00..0x1f.

use onnx_protect_crypto::MasterKey;

#[test]
fn tier_down_matches_the_independent_vectors() {
    let top = MasterKey::from_bytes(core::array::from_fn(|i| i as u8));
    let one = top.tier_down();
    let two = one.tier_down();
    assert_eq!(one.to_hex().as_str(), "6073075f1f4b8062e3fe8177a782a4e00da3a1401ad81c6c9a2f3a60b24bd17f");
    assert_eq!(two.to_hex().as_str(), "a62ccce4761ea0e62df9b3a47df40a5df3dea391cc35ade677424403940f65bd");
}

#[test]
fn tier_down_is_not_its_own_inverse() {
    let k = MasterKey::from_bytes([9; 32]);
    assert_ne!(k.tier_down().tier_down().to_hex().as_str(), k.to_hex().as_str());
    assert_ne!(k.tier_down().to_hex().as_str(), k.to_hex().as_str());
}
