use super::*;

#[test]
fn the_default_is_every_role_but_quant_whole_and_star_reaches_every_rule() {
    let p = Policy::default();
    assert!(p.rules.is_empty() && p.layer_rules.is_empty() && p.name_rules.is_empty());
    for role in TensorRole::ALL {
        match p.role_rules.get(&role) {
            Some(r) => assert_eq!(
                (r.coefficient, r.mode, r.split, r.rank),
                (1.0, Mode::Ctr, Split::FirstDim, Rank::Even),
                "{role:?}"
            ),
            None => assert_eq!(role, TensorRole::Quant),
        }
    }
    // '*=0.5' gives every role half of its rows.
    let mut q = Policy::default();
    q.apply_override("coefficient", "*=0.5").unwrap();
    assert!(q.role_rules.values().all(|r| r.coefficient == 0.5));
}

#[test]
fn a_toml_syntax_error_names_its_line_and_column() {
    let e = Policy::from_toml("version = 1\n[ops.Conv]\ncoefficient = = 0.1\n").unwrap_err().to_string();
    assert!(e.starts_with("policy: line 3, column 15: "), "{e}");
    let e = Policy::from_toml("version = 1\n[ops.Conv]\ncoefficient = \"x\"\n").unwrap_err().to_string();
    assert!(e.contains("line 3, column "), "{e}");
}

#[test]
fn toml_overrides_one_operator() {
    let p = Policy::from_toml(
        "version = 1\n[ops.Conv]\ncoefficient = 0.1\nmode = \"ctr\"\nsubsequences = 8\nroles = [\"W\"]\n",
    )
    .unwrap();
    let c = p.rule_for("Conv").unwrap();
    assert_eq!((c.coefficient, c.mode, c.split), (0.1, Mode::Ctr, Split::Count(8)));
    // The built-in policy's other rules are kept: every role whole.
    assert_eq!(p.rule_for("MatMul"), None);
    assert_eq!(p.role_rules[&TensorRole::Weight].coefficient, DEFAULT_ROLE_COEFFICIENT);
    // Without inheriting, only the rules of the file.
    let q = Policy::from_toml(
        "version = 1
inherit_builtin = false
[ops.Conv]
coefficient = 0.1
",
    )
    .unwrap();
    assert_eq!((q.rules.len(), q.layer_rules.len(), q.role_rules.len()), (1, 0, 0));
    assert_eq!(q.rule_for("Conv").unwrap().coefficient, 0.1);
}

#[test]
fn bad_policies_are_refused_with_a_reason() {
    for (text, needle) in [
        ("version = 2", "version 2"),
        ("version = 1\n[ops.Conv]\ncoefficient = 1.5", "outside [0, 1]"),
        ("version = 1\n[ops.Frobnicate]\ncoefficient = 0.1", "unknown operator"),
        ("version = 1\n[ops.Conv]\nroles = [\"Q\"]", "unknown role"),
        ("version = 1\n[ops.Conv]\nmode = \"xor\"", "policy"),
        ("version = 1\nbogus = 3", "policy"),
        ("not toml at all [", "policy"),
    ] {
        let e = Policy::from_toml(text).unwrap_err().to_string();
        assert!(e.contains(needle), "{text}: {e}");
    }
}

#[test]
fn the_default_mode_follows_the_tier_count_but_a_set_mode_does_not() {
    let mut p = Policy::default();
    let weight = |p: &Policy| p.mode_of(&p.role_rules[&TensorRole::Weight]);
    assert_eq!(weight(&p), DEFAULT_MODE);
    p.set_tiers(3).unwrap();
    assert_eq!(weight(&p), DEFAULT_TIERED_MODE);
    assert!(p.summary().contains("role:weight:1:fp:"), "{}", p.summary());
    assert!(p.summary().contains("role:norm:1:fp:"), "{}", p.summary());
    p.apply_override("mode", "Conv=ctr").unwrap();
    let conv = |p: &Policy| p.mode_of(p.rule_for("Conv").unwrap());
    assert_eq!(conv(&p), Mode::Ctr);
    assert_eq!(weight(&p), DEFAULT_TIERED_MODE);
    let f = Policy::from_toml("version = 1\ntiers = 2\n[defaults]\nmode = \"dp\"\n").unwrap();
    assert_eq!(weight(&f), Mode::Dp);
    let f = Policy::from_toml("version = 1\ntiers = 2\n[ops.Gemm]\nmode = \"ctr\"\n").unwrap();
    assert_eq!((weight(&f), f.mode_of(f.rule_for("Gemm").unwrap())), (Mode::Fp, Mode::Ctr));
}

#[test]
fn overrides_parse() {
    let mut p = Policy::default();
    p.apply_override("coefficient", "Conv=0.1").unwrap();
    p.apply_override("mode", "MatMul=ctr").unwrap();
    assert_eq!(p.rule_for("Conv").unwrap().coefficient, 0.1);
    assert_eq!(p.rule_for("MatMul").unwrap().mode, Mode::Ctr);
    assert!(p.apply_override("coefficient", "Conv").is_err());
    assert!(p.apply_override("mode", "Conv=rot13").is_err());
}

#[test]
fn default_tier_shares_leave_a_geometric_share_encrypted_below_the_top() {
    for n in 2..=MAX_TIERS {
        let s = default_tier_shares(n);
        assert_eq!(s.len(), n as usize);
        assert!((s.iter().sum::<f64>() - 1.0).abs() < 1e-12, "{s:?}");
        assert!(s.iter().all(|x| *x > 0.0), "{s:?}");
        // The holder of tier k lacks F_k = the shares above k: 0.35 for tier 1, 0.2 for N - 1.
        let still = |k: usize| s[k..].iter().sum::<f64>();
        if n > 2 {
            assert!((still(1) - DEFAULT_TIER1_STILL_ENCRYPTED).abs() < 1e-12, "{s:?}");
        }
        assert!((s[n as usize - 1] - DEFAULT_TOP_TIER_SHARE).abs() < 1e-12 || n == 2, "{s:?}");
    }
    assert_eq!(default_tier_shares(1), vec![1.0]);
    let three = default_tier_shares(3);
    assert!((three[0] - 0.65).abs() < 1e-12 && (three[1] - 0.15).abs() < 1e-12, "{three:?}");
    let mut p = Policy::default();
    p.set_tiers(3).unwrap();
    assert_eq!(p.shares().unwrap(), three);
}

#[test]
fn tier_levels_are_checked() {
    assert!(check_tier_levels(3, &[0.3, 0.7]).is_ok());
    let err = |t, l: &[f64]| check_tier_levels(t, l).unwrap_err().to_string();
    assert!(err(3, &[0.3]).contains("1 tier levels given for 3 tiers"), "{}", err(3, &[0.3]));
    assert!(err(3, &[0.7, 0.3]).contains("must increase"));
    assert!(err(3, &[0.5, 0.5]).contains("must increase"));
    assert!(err(3, &[0.0, 0.5]).contains("outside (0, 1)"));
    assert!(err(3, &[0.5, 1.0]).contains("outside (0, 1)"));
    assert!(err(3, &[0.5, f64::NAN]).contains("outside (0, 1)"));
    assert!(err(1, &[]).contains("need --tiers"));
}
