//! POSIX ACLs, stored as the `system.posix_acl_access` and `system.posix_acl_default`
//! extended attributes in the kernel's format. The kernel enforces them; the file system keeps
//! them in step with the mode (setting an access ACL sets the mode, chmod rewrites the ACL)
//! and hands a directory's default ACL down to what is created in it, as ext4 does.
//!
//! The format (linux/posix_acl_xattr.h): a little-endian u32 version (2), then entries of
//! u16 tag, u16 permissions (rwx = 4|2|1), u32 uid or gid.

use crate::error::{FsError, Result};

pub const ACCESS_XATTR: &[u8] = b"system.posix_acl_access";
pub const DEFAULT_XATTR: &[u8] = b"system.posix_acl_default";

const VERSION: u32 = 2;
const USER_OBJ: u16 = 0x01;
const USER: u16 = 0x02;
const GROUP_OBJ: u16 = 0x04;
const GROUP: u16 = 0x08;
const MASK: u16 = 0x10;
const OTHER: u16 = 0x20;

/// Whether `name` is one of the two ACL attributes.
pub fn is_acl_name(name: &[u8]) -> bool {
    name == ACCESS_XATTR || name == DEFAULT_XATTR
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Entry {
    pub tag: u16,
    pub perm: u16,
    pub id: u32,
}

/// An ACL in its stored order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Acl(pub Vec<Entry>);

impl Acl {
    /// Parses and checks an ACL attribute value: one owner, owning group and other entry, a
    /// mask when there are named entries.
    pub fn parse(value: &[u8]) -> Result<Acl> {
        let bad = |why: &str| FsError::new(libc::EINVAL, format!("invalid POSIX ACL: {why}"));
        if value.len() < 4 || !(value.len() - 4).is_multiple_of(8) {
            return Err(bad("bad length"));
        }
        if u32::from_le_bytes(value[..4].try_into().expect("4 bytes")) != VERSION {
            return Err(bad("unknown version"));
        }
        let entries: Vec<Entry> = value[4..]
            .chunks_exact(8)
            .map(|c| Entry {
                tag: u16::from_le_bytes([c[0], c[1]]),
                perm: u16::from_le_bytes([c[2], c[3]]),
                id: u32::from_le_bytes([c[4], c[5], c[6], c[7]]),
            })
            .collect();
        let count = |tag| entries.iter().filter(|e| e.tag == tag).count();
        let named = count(USER) + count(GROUP);
        if entries.is_empty() {
            return Ok(Acl(entries));
        }
        if count(USER_OBJ) != 1 || count(GROUP_OBJ) != 1 || count(OTHER) != 1 {
            return Err(bad("owner, group and other entries are required"));
        }
        if count(MASK) > 1 || (named > 0 && count(MASK) == 0) {
            return Err(bad("named entries need one mask entry"));
        }
        if entries.iter().any(|e| {
            e.perm & !7 != 0 || !matches!(e.tag, USER_OBJ | USER | GROUP_OBJ | GROUP | MASK | OTHER)
        }) {
            return Err(bad("unknown tag or permission bits"));
        }
        Ok(Acl(entries))
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(4 + 8 * self.0.len());
        out.extend_from_slice(&VERSION.to_le_bytes());
        for e in &self.0 {
            out.extend_from_slice(&e.tag.to_le_bytes());
            out.extend_from_slice(&e.perm.to_le_bytes());
            out.extend_from_slice(&e.id.to_le_bytes());
        }
        out
    }

    /// An ACL with no entries (a default ACL can be set empty, meaning none).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Only owner, group and other: what the mode bits say already.
    pub fn is_minimal(&self) -> bool {
        self.0
            .iter()
            .all(|e| matches!(e.tag, USER_OBJ | GROUP_OBJ | OTHER))
    }

    fn perm_of(&self, tag: u16) -> u16 {
        self.0.iter().find(|e| e.tag == tag).map_or(0, |e| e.perm)
    }

    /// The rwx bits of the mode an access ACL stands for: the owner entry, the mask (or the
    /// owning group without one) and other.
    pub fn mode_bits(&self) -> u16 {
        let group = if self.0.iter().any(|e| e.tag == MASK) {
            self.perm_of(MASK)
        } else {
            self.perm_of(GROUP_OBJ)
        };
        (self.perm_of(USER_OBJ) << 6) | (group << 3) | self.perm_of(OTHER)
    }

    /// chmod of a file with this access ACL: the owner, mask (or owning group) and other
    /// entries take the new mode's bits.
    pub fn chmod(&mut self, mode: u16) {
        let has_mask = self.0.iter().any(|e| e.tag == MASK);
        for e in &mut self.0 {
            match e.tag {
                USER_OBJ => e.perm = (mode >> 6) & 7,
                MASK => e.perm = (mode >> 3) & 7,
                GROUP_OBJ if !has_mask => e.perm = (mode >> 3) & 7,
                OTHER => e.perm = mode & 7,
                _ => {}
            }
        }
    }

    /// A new inode's access ACL from its directory's default ACL, and its mode: the ACL's
    /// owner, mask (or owning group) and other entries and the requested mode's bits limit
    /// each other (the kernel's posix_acl_create_masq). Returns the new mode's rwx bits.
    pub fn create_masq(&mut self, mode: u16) -> u16 {
        let mut mode = mode & 0o777;
        let has_mask = self.0.iter().any(|e| e.tag == MASK);
        for e in &mut self.0 {
            match e.tag {
                USER_OBJ => {
                    e.perm &= (mode >> 6) & 7;
                    mode &= (e.perm << 6) | 0o077;
                }
                OTHER => {
                    e.perm &= mode & 7;
                    mode &= e.perm | 0o770;
                }
                _ => {}
            }
        }
        for e in &mut self.0 {
            if e.tag == MASK || (e.tag == GROUP_OBJ && !has_mask) {
                e.perm &= (mode >> 3) & 7;
                mode &= (e.perm << 3) | 0o707;
            }
        }
        mode
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn acl(entries: &[(u16, u16, u32)]) -> Acl {
        Acl(entries
            .iter()
            .map(|&(tag, perm, id)| Entry { tag, perm, id })
            .collect())
    }

    #[test]
    fn round_trip_and_checks() {
        let a = acl(&[
            (USER_OBJ, 6, 0),
            (USER, 7, 1234),
            (GROUP_OBJ, 4, 0),
            (MASK, 6, 0),
            (OTHER, 0, 0),
        ]);
        assert_eq!(Acl::parse(&a.encode()).unwrap(), a);
        assert_eq!(a.mode_bits(), 0o660);
        assert!(!a.is_minimal());
        // Named entries without a mask, a missing owner entry, a bad version: refused.
        let no_mask = acl(&[
            (USER_OBJ, 6, 0),
            (USER, 7, 1),
            (GROUP_OBJ, 4, 0),
            (OTHER, 0, 0),
        ]);
        assert!(Acl::parse(&no_mask.encode()).is_err());
        assert!(Acl::parse(&acl(&[(GROUP_OBJ, 4, 0), (OTHER, 0, 0)]).encode()).is_err());
        let mut v = a.encode();
        v[0] = 1;
        assert!(Acl::parse(&v).is_err());
        assert!(Acl::parse(&v[..7]).is_err());
        assert!(Acl::parse(&VERSION.to_le_bytes()).unwrap().is_empty());
    }

    #[test]
    fn chmod_rewrites_the_mask() {
        let mut a = acl(&[
            (USER_OBJ, 6, 0),
            (USER, 6, 1234),
            (GROUP_OBJ, 4, 0),
            (MASK, 6, 0),
            (OTHER, 0, 0),
        ]);
        a.chmod(0o600);
        assert_eq!(a.mode_bits(), 0o600);
        assert_eq!(
            a.perm_of(GROUP_OBJ),
            4,
            "the owning group entry stays behind the mask"
        );
        let mut minimal = acl(&[(USER_OBJ, 6, 0), (GROUP_OBJ, 4, 0), (OTHER, 4, 0)]);
        minimal.chmod(0o751);
        assert_eq!(minimal.mode_bits(), 0o751);
    }

    #[test]
    fn inheritance_as_ext4() {
        // setfacl -d -m u:1234:rwx on a directory; then touch (0666) and mkdir (0777) in it.
        let default = acl(&[
            (USER_OBJ, 7, 0),
            (USER, 7, 1234),
            (GROUP_OBJ, 5, 0),
            (MASK, 7, 0),
            (OTHER, 5, 0),
        ]);
        let mut file = default.clone();
        assert_eq!(file.create_masq(0o666), 0o664);
        assert_eq!(
            file,
            acl(&[
                (USER_OBJ, 6, 0),
                (USER, 7, 1234),
                (GROUP_OBJ, 5, 0),
                (MASK, 6, 0),
                (OTHER, 4, 0)
            ])
        );
        let mut dir = default.clone();
        assert_eq!(dir.create_masq(0o777), 0o775);
        assert_eq!(dir, default);
    }
}
