use super::*;

#[test]
fn names_are_checked_like_the_kernel_does() {
    for ok in ["eth0", "vm-0", "a", "123456789012345", "br.10", "zone_0@x"] {
        validate_name(ok).expect(ok);
    }
    let cases = [
        ("", "empty"),
        ("1234567890123456", "15 bytes"),
        (".", "reserved"),
        ("..", "reserved"),
        ("a/b", "'/'"),
        ("eth0:1", "':'"),
        ("a b", "whitespace"),
        ("a\tb", "whitespace"),
        ("a\0", "NUL"),
    ];
    for (bad, why) in cases {
        let e = validate_name(bad).expect_err(bad);
        let text = e.to_string();
        assert!(text.contains(why), "{text:?} should say {why}");
        assert!(
            text.contains(&format!("'{bad}'")),
            "{text:?} names the link"
        );
    }
    // ASCII only (the kernel's isspace() counts byte 0xA0, inside UTF-8, as a space), and
    // names the kernel or nftables would read as patterns.
    validate_name("ééé").expect_err("not ASCII");
    validate_name("zone%d").expect_err("a kernel name template");
    validate_name("zone*").expect_err("an nftables wildcard");
}

#[test]
fn modes_map_to_the_kernel_values() {
    // MACVLAN_MODE_* of linux/if_link.h: the ABI, checked here rather than trusted.
    let expected = [
        (MacvtapMode::Private, 1, "private"),
        (MacvtapMode::Vepa, 2, "vepa"),
        (MacvtapMode::Bridge, 4, "bridge"),
        (MacvtapMode::Passthru, 8, "passthru"),
    ];
    for (mode, value, name) in expected {
        assert_eq!(mode.kernel_value(), value);
        assert_eq!(MacvtapMode::from_kernel_value(value), Some(mode));
        assert_eq!(mode.to_string(), name);
        assert_eq!(name.parse::<MacvtapMode>(), Ok(mode));
        assert_eq!(MacvtapMode::from_netlink(mode.to_netlink()), Some(mode));
    }
    assert_eq!(MacvtapMode::from_kernel_value(16), None, "source mode");
    assert_eq!(MacvtapMode::from_kernel_value(0), None);
    let e = "passthrough"
        .parse::<MacvtapMode>()
        .expect_err("not a mode");
    assert_eq!(
        e.to_string(),
        "'passthrough' is not a macvtap mode: write private, vepa, bridge or passthru"
    );
}

#[test]
fn error_text_names_the_operation_and_the_link() {
    let e = Failure::Kernel {
        source: io::Error::from_raw_os_error(libc::EEXIST),
        kernel: None,
    }
    .into_error("creating macvtap 'vm0' on 'eth0'");
    assert_eq!(
        e.to_string(),
        "creating macvtap 'vm0' on 'eth0' failed: File exists (os error 17)"
    );
    assert_eq!(e.os_error(), Some(libc::EEXIST));
    let e = Failure::Kernel {
        source: io::Error::from_raw_os_error(libc::EINVAL),
        kernel: Some("Unknown device type".into()),
    }
    .into_error("creating bridge 'br0'");
    assert_eq!(
        e.to_string(),
        "creating bridge 'br0' failed: Invalid argument (os error 22) (kernel: Unknown device type)"
    );
    let e = PlumbError::NoSuchLink { name: "x".into() };
    assert_eq!(e.to_string(), "no link named 'x' in this network namespace");
    assert_eq!(e.missing_link(), Some("x"));
    let e = PlumbError::MissingLink {
        op: "creating macvtap 'vm0' on 'eth9'".into(),
        name: "eth9".into(),
    };
    assert_eq!(
        e.to_string(),
        "creating macvtap 'vm0' on 'eth9' failed: no link named 'eth9' in this network namespace"
    );
}

/// One netlink message: header then payload, padded to 4 bytes.
fn message(kind: u16, flags: u16, seq: u32, port: u32, payload: &[u8]) -> Vec<u8> {
    let len = 16 + payload.len();
    let mut out = Vec::new();
    out.extend_from_slice(&(len as u32).to_ne_bytes());
    out.extend_from_slice(&kind.to_ne_bytes());
    out.extend_from_slice(&flags.to_ne_bytes());
    out.extend_from_slice(&seq.to_ne_bytes());
    out.extend_from_slice(&port.to_ne_bytes());
    out.extend_from_slice(payload);
    out.resize(align4(len), 0);
    out
}

/// An `NLMSG_ERROR` payload: the code, the request's header (capped), then TLVs.
fn error_payload(code: i32, seq: u32, tlvs: &[u8]) -> Vec<u8> {
    let mut out = code.to_ne_bytes().to_vec();
    out.extend_from_slice(&message(16, 0x405, seq, 0, &[])[..16]);
    out.extend_from_slice(tlvs);
    out
}

fn msg_tlv(text: &str) -> Vec<u8> {
    let mut value = text.as_bytes().to_vec();
    value.push(0);
    let len = 4 + value.len();
    let mut out = (len as u16).to_ne_bytes().to_vec();
    out.extend_from_slice(&NLMSGERR_ATTR_MSG.to_ne_bytes());
    out.extend_from_slice(&value);
    out.resize(align4(len), 0);
    out
}

fn link_payload(index: u32, name: &str) -> Vec<u8> {
    let mut msg = LinkMessage::default();
    msg.header.index = index;
    msg.attributes.push(LinkAttribute::IfName(name.to_string()));
    let mut out = vec![0u8; netlink_packet_core::Emitable::buffer_len(&msg)];
    netlink_packet_core::Emitable::emit(&msg, &mut out);
    out
}

const RTM_NEWLINK: u16 = libc::RTM_NEWLINK;

#[test]
fn an_ack_ends_a_request_and_stale_replies_are_skipped() {
    let mut r = Replies::new(7, 42, false);
    // A reply to sequence 6 (a request that timed out) and one for another port.
    let mut d = message(NLMSG_ERROR, 0, 6, 42, &error_payload(-libc::EEXIST, 6, &[]));
    d.extend(message(NLMSG_ERROR, 0, 7, 41, &error_payload(0, 7, &[])));
    assert!(!r.feed(&d).expect("stale replies are not errors"));
    let mut d = message(RTM_NEWLINK, 0, 7, 42, &link_payload(3, "vm0"));
    d.extend(message(NLMSG_ERROR, 0, 7, 42, &error_payload(0, 7, &[])));
    assert!(r.feed(&d).expect("data then ACK"));
    assert_eq!(r.messages.len(), 1);
    match &r.messages[0] {
        RouteNetlinkMessage::NewLink(m) => {
            let link = Link::from_message(m.clone());
            assert_eq!((link.index, link.name.as_str()), (3, "vm0"));
        }
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn an_error_carries_the_errno_and_the_kernel_message() {
    let mut r = Replies::new(1, 9, false);
    let tlvs = msg_tlv("Unknown device type");
    let d = message(
        NLMSG_ERROR,
        NLM_F_CAPPED | NLM_F_ACK_TLVS,
        1,
        9,
        &error_payload(-libc::EOPNOTSUPP, 1, &tlvs),
    );
    let f = r.feed(&d).expect_err("a refusal");
    let e = f.into_error("creating macvtap 'vm0' on 'lo'");
    assert_eq!(e.os_error(), Some(libc::EOPNOTSUPP));
    let text = e.to_string();
    assert!(
        text.starts_with("creating macvtap 'vm0' on 'lo' failed: "),
        "{text}"
    );
    assert!(text.ends_with("(kernel: Unknown device type)"), "{text}");
}

#[test]
fn the_extended_ack_is_found_after_an_uncapped_request() {
    // Not capped: the whole request (header + 8 payload bytes) is echoed before the TLVs.
    let mut rest = message(16, 0x405, 1, 0, &[1, 2, 3, 4, 5, 6, 7, 8]);
    rest.extend(msg_tlv("bad thing"));
    assert_eq!(
        ext_ack_message(NLM_F_ACK_TLVS, &rest).as_deref(),
        Some("bad thing")
    );
    assert_eq!(ext_ack_message(0, &rest), None, "no TLVs flagged");
    assert_eq!(
        ext_ack_message(NLM_F_ACK_TLVS, &rest[..3]),
        None,
        "truncated"
    );
}

#[test]
fn a_multipart_dump_ends_with_done() {
    let mut r = Replies::new(5, 1, true);
    let f = netlink_packet_core::NLM_F_MULTIPART;
    let mut d = message(RTM_NEWLINK, f, 5, 1, &link_payload(1, "lo"));
    d.extend(message(RTM_NEWLINK, f, 5, 1, &link_payload(2, "eth0")));
    assert!(!r.feed(&d).expect("first part"));
    let d = message(
        RTM_NEWLINK,
        f | NLM_F_DUMP_INTR,
        5,
        1,
        &link_payload(3, "br0"),
    );
    assert!(!r.feed(&d).expect("second part"));
    let d = message(NLMSG_DONE, f, 5, 1, &0i32.to_ne_bytes());
    assert!(r.feed(&d).expect("done"));
    assert_eq!(r.messages.len(), 3);
    assert!(r.interrupted);
    // A dump that ends with an error code in NLMSG_DONE.
    let mut r = Replies::new(6, 1, true);
    let d = message(NLMSG_DONE, f, 6, 1, &(-libc::EMSGSIZE).to_ne_bytes());
    let e = r
        .feed(&d)
        .expect_err("failed dump")
        .into_error("listing links");
    assert_eq!(e.os_error(), Some(libc::EMSGSIZE));
}

#[test]
fn garbage_is_a_protocol_error_not_a_panic() {
    let mut r = Replies::new(1, 1, false);
    for bad in [&[1u8, 2, 3][..], &[0xff; 16][..], &[16, 0, 0, 0, 2, 0][..]] {
        assert!(matches!(r.feed(bad), Err(Failure::Protocol(_))), "{bad:?}");
    }
    // A length field shorter than the header.
    let mut d = message(NLMSG_ERROR, 0, 1, 1, &error_payload(0, 1, &[]));
    d[0..4].copy_from_slice(&8u32.to_ne_bytes());
    assert!(matches!(r.feed(&d), Err(Failure::Protocol(_))));
}

#[test]
fn link_events_are_parsed_and_garbage_is_skipped() {
    let mut d = message(RTM_NEWLINK, 0, 0, 0, &link_payload(3, "vm0"));
    d.extend(message(libc::RTM_DELLINK, 0, 0, 0, &link_payload(4, "vm1")));
    // An address event (not a link's) and a truncated message.
    d.extend(message(libc::RTM_NEWADDR, 0, 0, 0, &[0; 8]));
    d.extend(message(NLMSG_OVERRUN, 0, 0, 0, &[]));
    d.extend_from_slice(&[0xff, 0, 0, 0, 1]);
    let mut out = Vec::new();
    super::monitor::parse_events(&d, &mut out);
    let got: Vec<(char, u32, String)> = out
        .iter()
        .map(|e| match e {
            LinkEvent::New(l) => ('+', l.index, l.name.clone()),
            LinkEvent::Del(l) => ('-', l.index, l.name.clone()),
            LinkEvent::Overrun => ('!', 0, String::new()),
        })
        .collect();
    assert_eq!(
        got,
        vec![
            ('+', 3, "vm0".to_string()),
            ('-', 4, "vm1".to_string()),
            ('!', 0, String::new())
        ]
    );
}
