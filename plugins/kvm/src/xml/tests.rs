//! Unit tests of the XML model: round trips, escaping, foreign metadata, units.
use std::collections::BTreeMap;

use super::*;
use crate::spec::{CloudInit, DiskFormat, InstanceConfig, NetworkType};

fn meta() -> InstanceMeta {
    InstanceMeta {
        xmlns: None,
        id: "i-1".into(),
        created_at: "2024-06-04T10:00:00Z".into(),
        updated_at: "2024-06-04T10:00:00Z".into(),
        started: false,
        labels: LabelsXml::from_map(&BTreeMap::from([
            ("app".to_string(), "<web & \"x\">".to_string()),
            ("empty".to_string(), String::new()),
        ])),
        config: InstanceConfig {
            image: "ubuntu-22.04".into(),
            disk_format: DiskFormat::Qcow2,
            network_type: NetworkType::Bridge,
            network_source: Some("br0'\"><evil/>".into()),
            cloud_init: Some(CloudInit {
                user_data: Some("#cloud-config\n</instance>\n".into()),
                meta_data: None,
                network_config: None,
            }),
            guest_agent: Some(false),
        },
        pool: "unicompute".into(),
        disk: "/p/i-1.qcow2".into(),
        disk_size: 20 << 30,
        seed: Some("/p/i-1-seed.img".into()),
    }
}

fn spec() -> DomainSpec {
    DomainSpec {
        domain_type: "kvm".into(),
        name: "vm<1>".into(),
        vcpus: 2,
        max_vcpus: 4,
        cpu_mode: Some("host-passthrough"),
        memory: 2 << 30,
        disk: ("/p/i-1.qcow2".into(), "qcow2".into()),
        seed: Some("/p/i-1-seed.img".into()),
        nic: Some(Nic::Bridge("br0'\"><evil/>".into())),
        console_log: Some("/var/log/libvirt/qemu/i-1-serial.log".into()),
        guest_agent: true,
        meta: meta(),
    }
}

#[test]
fn domain_xml_round_trips_and_escapes() {
    let xml = spec().to_xml().unwrap();
    assert!(xml.starts_with("<domain type=\"kvm\">"), "{xml}");
    assert!(!xml.contains("<evil/>"), "{xml}");
    assert!(xml.contains("<readonly/>"), "{xml}");
    assert!(xml.contains("<acpi/>"), "{xml}");
    assert!(xml.contains("<cpu mode=\"host-passthrough\"/>"), "{xml}");
    let default = DomainSpec {
        cpu_mode: None,
        ..spec()
    };
    assert!(!default.to_xml().unwrap().contains("<cpu"));
    let doc = DomainDoc::parse(&xml.replace(
        "<domain type=\"kvm\">",
        "<domain type=\"kvm\"><uuid>u-1</uuid>",
    ))
    .unwrap();
    assert_eq!(doc.name, "vm<1>");
    assert_eq!(doc.vcpus(), 2);
    assert_eq!(doc.max_vcpus(), 4);
    assert_eq!(doc.memory(), 2 << 30);
    let m = doc.meta().unwrap();
    let mut expected = meta();
    expected.xmlns = Some(NAMESPACE.into());
    assert_eq!(m, &expected);
    assert_eq!(doc.disks().len(), 2);
    assert_eq!(doc.disks()[0].file(), Some("/p/i-1.qcow2"));
    assert_eq!(doc.interfaces()[0].kind, "bridge");
    assert_eq!(doc.interfaces()[0].source(), Some("br0'\"><evil/>"));
}

#[test]
fn the_interface_is_the_resolved_nic_not_the_config() {
    // The config asks for a bridge; the create resolved it to a libvirt network.
    let xml = DomainSpec {
        nic: Some(Nic::Network("default".into())),
        ..spec()
    }
    .to_xml()
    .unwrap();
    let doc = DomainDoc::parse(&xml.replace(
        "<domain type=\"kvm\">",
        "<domain type=\"kvm\"><uuid>u-1</uuid>",
    ))
    .unwrap();
    assert_eq!(doc.interfaces().len(), 1);
    assert_eq!(doc.interfaces()[0].kind, "network");
    assert_eq!(doc.interfaces()[0].source(), Some("default"));
    let user = DomainSpec {
        nic: Some(Nic::User),
        ..spec()
    };
    assert!(user.to_xml().unwrap().contains("<interface type=\"user\">"));
    let none = DomainSpec {
        nic: None,
        ..spec()
    };
    assert!(!none.to_xml().unwrap().contains("<interface"));
}

#[test]
fn foreign_metadata_is_not_ours() {
    let xml = r#"<domain type="kvm"><name>n</name><uuid>u</uuid>
        <metadata><nova:instance xmlns:nova="http://openstack.org/xmlns/libvirt/nova/1.1"><nova:name>x</nova:name></nova:instance></metadata>
        <memory unit="KiB">1024</memory><vcpu>1</vcpu><devices/></domain>"#;
    // A domain made by someone else parses (a resync lists every domain) and has
    // no record of ours.
    let doc = DomainDoc::parse(xml).expect("a foreign domain parses");
    assert!(doc.meta().is_none());
    assert_eq!(doc.vcpus(), 1);
    assert_eq!(doc.memory(), 1 << 20);
    // One of ours that another application also annotated stays ours.
    let xml = spec().to_xml().unwrap().replace(
        "<metadata>",
        "<uuid>u-1</uuid><metadata><nova:instance xmlns:nova=\"http://openstack.org/xmlns/libvirt/nova/1.1\"><nova:name>x</nova:name></nova:instance><other/>",
    );
    let doc = DomainDoc::parse(&xml).expect("ours with foreign metadata parses");
    assert_eq!(doc.meta().map(|m| m.id.as_str()), Some("i-1"));
}

#[test]
fn metadata_element_has_no_prefix() {
    let s = meta().to_metadata_element().unwrap();
    assert!(s.starts_with("<instance>"), "{s}");
}

#[test]
fn pool_xml_round_trips() {
    let xml = PoolXml::dir("p", "/var/lib/x").to_xml().unwrap();
    assert_eq!(
        xml,
        "<pool type=\"dir\"><name>p</name><target><path>/var/lib/x</path></target></pool>"
    );
    assert_eq!(PoolDoc::parse(&xml).unwrap().path(), Some("/var/lib/x"));
}

#[test]
fn memory_units() {
    let a = Amount {
        unit: Some("MiB".into()),
        value: 3,
    };
    assert_eq!(a.bytes(), 3 << 20);
}

#[test]
fn serial_console_output_is_kept_in_a_log_file() {
    let xml = spec().to_xml().unwrap();
    assert!(
        xml.contains(
            "<serial type=\"pty\"><log file=\"/var/log/libvirt/qemu/i-1-serial.log\" append=\"on\"/></serial>"
        ),
        "{xml}"
    );
    let doc = DomainDoc::parse(&xml.replace(
        "<domain type=\"kvm\">",
        "<domain type=\"kvm\"><uuid>u-1</uuid>",
    ))
    .unwrap();
    assert_eq!(
        doc.console_log(),
        Some("/var/log/libvirt/qemu/i-1-serial.log")
    );
    // As libvirt writes it back (single quotes, a target, a console copy).
    let live = "<domain type='kvm'><name>a</name><uuid>u</uuid><devices>\
        <serial type='pty'><source path='/dev/pts/3'/>\
        <log file='/l/i-2-serial.log' append='on'/><target type='isa-serial' port='0'/></serial>\
        <console type='pty' tty='/dev/pts/3'><log file='/l/i-2-serial.log' append='on'/></console>\
        </devices></domain>";
    assert_eq!(
        DomainDoc::parse(live).unwrap().console_log(),
        Some("/l/i-2-serial.log")
    );
    // None: no <log>, as before.
    let without = DomainSpec {
        console_log: None,
        ..spec()
    };
    let xml = without.to_xml().unwrap();
    assert!(xml.contains("<serial type=\"pty\"/>"), "{xml}");
    let doc = DomainDoc::parse(&xml.replace(
        "<domain type=\"kvm\">",
        "<domain type=\"kvm\"><uuid>u-1</uuid>",
    ))
    .unwrap();
    assert_eq!(doc.console_log(), None);
}

#[test]
fn a_guest_agent_channel_is_recognised() {
    let with = |channels: &str| {
        DomainDoc::parse(&format!(
            "<domain type='kvm'><name>a</name><uuid>u</uuid><devices>\
             <serial type='pty'/>{channels}<console type='pty'/></devices></domain>"
        ))
        .unwrap()
        .has_guest_agent()
    };
    assert!(with(
        "<channel type='unix'><source mode='bind' path='/run/x.sock'/>\
         <target type='virtio' name='org.qemu.guest_agent.0' state='connected'/>\
         <address type='virtio-serial' controller='0' bus='0' port='1'/></channel>"
    ));
    // Another channel first (spice), then the agent's.
    assert!(with(
        "<channel type='spicevmc'><target type='virtio' name='com.redhat.spice.0'/></channel>\
         <channel type='unix'><target type='virtio' name='org.qemu.guest_agent.0'/></channel>"
    ));
    assert!(!with(""));
    assert!(!with(
        "<channel type='unix'><target type='virtio' name='org.example.other'/></channel>"
    ));
    assert!(!with(
        "<channel type='pty'><target type='virtio' name='org.qemu.guest_agent.0'/></channel>"
    ));
}

#[test]
fn a_new_domain_has_a_guest_agent_channel_unless_opted_out() {
    let parse = |xml: &str| {
        DomainDoc::parse(&xml.replace(
            "<domain type=\"kvm\">",
            "<domain type=\"kvm\"><uuid>u-1</uuid>",
        ))
        .unwrap()
    };
    let xml = spec().to_xml().unwrap();
    assert!(
        xml.contains(
            "<channel type=\"unix\"><source mode=\"bind\"/>\
             <target type=\"virtio\" name=\"org.qemu.guest_agent.0\"/></channel>"
        ),
        "{xml}"
    );
    assert!(parse(&xml).has_guest_agent());
    // The opt-out: no channel at all.
    let xml = DomainSpec {
        guest_agent: false,
        ..spec()
    }
    .to_xml()
    .unwrap();
    assert!(!xml.contains("<channel"), "{xml}");
    assert!(!parse(&xml).has_guest_agent());
    // The applied config (with the opt-out) round-trips through the metadata.
    let doc = parse(&xml);
    assert_eq!(doc.meta().unwrap().config.guest_agent, Some(false));
}
