//! Piece and block geometry: the one place that turns byte offsets into pieces, blocks and file
//! spans. Every other crate asks this module instead of doing the arithmetic itself.

use std::fmt;

/// Blocks (the unit of a peer `request`) are 16 KiB, except the last block of the last piece.
pub const BLOCK_SIZE: u32 = 16 * 1024;

/// Largest piece length read from a torrent (real torrents with ~512 MiB pieces exist and
/// libtorrent loads them); a piece is buffered whole when hashed, so there must be a bound.
pub const MAX_PIECE_LENGTH: u64 = 512 * 1024 * 1024;
/// Largest piece length pow creates torrents with.
pub const MAX_CREATE_PIECE_LENGTH: u64 = 128 * 1024 * 1024;

/// Index of a piece, checked against a [`Geometry`] when it is made with [`Geometry::piece`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PieceIndex(u32);

impl PieceIndex {
    pub fn get(self) -> u32 {
        self.0
    }
    pub fn as_usize(self) -> usize {
        self.0 as usize
    }
}

impl fmt::Display for PieceIndex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// One block of one piece: what a peer `request` names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Block {
    pub piece: PieceIndex,
    /// Offset of the block inside its piece.
    pub begin: u32,
    pub length: u32,
}

/// A run of bytes that lies inside one file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileSpan {
    /// Index into the torrent's file list.
    pub file: usize,
    /// Offset inside that file.
    pub offset: u64,
    pub length: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GeometryError {
    #[error("piece length {0} is out of range (1 byte to 512 MiB; 16 KiB multiples up to 128 MiB when creating)")]
    BadPieceLength(u64),
    #[error("total length is zero")]
    Empty,
    #[error("{pieces} piece hashes do not cover {total} bytes at {piece_length} bytes a piece (need {needed})")]
    PieceCountMismatch {
        pieces: u64,
        needed: u64,
        total: u64,
        piece_length: u64,
    },
    #[error("too many pieces ({0}); at most 2^31 are supported")]
    TooManyPieces(u64),
}

/// The validated shape of a torrent's content: total length, piece length, piece count, and the
/// start offset of every file in the concatenated stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Geometry {
    total_length: u64,
    piece_length: u32,
    piece_count: u32,
    /// Start offset of each file; `file_starts.len()` is the file count.
    file_starts: Vec<u64>,
    file_lengths: Vec<u64>,
}

impl Geometry {
    /// Checks the numbers and builds the geometry. `piece_count` is how many hashes the
    /// torrent carries: it must be exactly `ceil(total / piece_length)`.
    ///
    /// Piece lengths that are not a multiple of 16 KiB are legal in BEP 3 and appear in old
    /// torrents; they are accepted when `strict_piece_length` is false (reading) and refused
    /// when true (creating).
    pub fn new(
        piece_length: u64,
        file_lengths: Vec<u64>,
        piece_count: u64,
        strict_piece_length: bool,
    ) -> Result<Geometry, GeometryError> {
        let whole_blocks = piece_length.is_multiple_of(u64::from(BLOCK_SIZE));
        if piece_length == 0
            || piece_length > MAX_PIECE_LENGTH
            || (strict_piece_length && (!whole_blocks || piece_length > MAX_CREATE_PIECE_LENGTH))
        {
            return Err(GeometryError::BadPieceLength(piece_length));
        }
        let total_length: u64 = file_lengths.iter().sum();
        if total_length == 0 {
            return Err(GeometryError::Empty);
        }
        let needed = total_length.div_ceil(piece_length);
        if needed > i32::MAX as u64 {
            return Err(GeometryError::TooManyPieces(needed));
        }
        if piece_count != needed {
            return Err(GeometryError::PieceCountMismatch {
                pieces: piece_count,
                needed,
                total: total_length,
                piece_length,
            });
        }
        let mut file_starts = Vec::with_capacity(file_lengths.len());
        let mut offset = 0;
        for len in &file_lengths {
            file_starts.push(offset);
            offset += len;
        }
        Ok(Geometry {
            total_length,
            piece_length: piece_length as u32,
            piece_count: needed as u32,
            file_starts,
            file_lengths,
        })
    }

    pub fn total_length(&self) -> u64 {
        self.total_length
    }
    pub fn piece_length(&self) -> u32 {
        self.piece_length
    }
    pub fn piece_count(&self) -> u32 {
        self.piece_count
    }
    pub fn file_count(&self) -> usize {
        self.file_starts.len()
    }

    /// A checked piece index.
    pub fn piece(&self, index: u32) -> Option<PieceIndex> {
        (index < self.piece_count).then_some(PieceIndex(index))
    }

    pub fn pieces(&self) -> impl Iterator<Item = PieceIndex> {
        (0..self.piece_count).map(PieceIndex)
    }

    /// Length of piece `piece`: `piece_length`, except the last one, which holds the rest.
    pub fn piece_size(&self, piece: PieceIndex) -> u32 {
        if piece.0 + 1 == self.piece_count {
            let rest = self.total_length - u64::from(self.piece_length) * u64::from(piece.0);
            rest as u32
        } else {
            self.piece_length
        }
    }

    pub fn last_piece_size(&self) -> u32 {
        self.piece_size(PieceIndex(self.piece_count - 1))
    }

    /// Byte offset of the piece in the concatenated content.
    pub fn piece_offset(&self, piece: PieceIndex) -> u64 {
        u64::from(piece.0) * u64::from(self.piece_length)
    }

    pub fn blocks_in_piece(&self, piece: PieceIndex) -> u32 {
        self.piece_size(piece).div_ceil(BLOCK_SIZE)
    }

    /// The blocks of a piece, in order; the last one may be short.
    pub fn blocks(&self, piece: PieceIndex) -> impl Iterator<Item = Block> {
        let size = self.piece_size(piece);
        (0..size.div_ceil(BLOCK_SIZE)).map(move |i| {
            let begin = i * BLOCK_SIZE;
            Block {
                piece,
                begin,
                length: BLOCK_SIZE.min(size - begin),
            }
        })
    }

    /// Checks a block a peer names: inside the piece, not empty, at most 16 KiB. Blocks need
    /// not be aligned to 16 KiB (BEP 3 allows any range), but they must fit.
    pub fn block(&self, piece: u32, begin: u32, length: u32) -> Option<Block> {
        let piece = self.piece(piece)?;
        let end = u64::from(begin) + u64::from(length);
        (length > 0 && length <= BLOCK_SIZE && end <= u64::from(self.piece_size(piece))).then_some(
            Block {
                piece,
                begin,
                length,
            },
        )
    }

    /// The file spans covering the byte range `[offset, offset + length)` of the content, in
    /// order, skipping zero-length files. Ranges past the end are clipped.
    pub fn spans(&self, offset: u64, length: u64) -> Vec<FileSpan> {
        let end = (offset + length).min(self.total_length);
        let mut spans = Vec::new();
        if offset >= end {
            return spans;
        }
        // First file whose end is past `offset`.
        let first = self
            .file_starts
            .partition_point(|&start| start <= offset)
            .saturating_sub(1);
        for file in first..self.file_starts.len() {
            let start = self.file_starts[file];
            if start >= end {
                break;
            }
            let file_end = start + self.file_lengths[file];
            let lo = offset.max(start);
            let hi = end.min(file_end);
            if hi > lo {
                spans.push(FileSpan {
                    file,
                    offset: lo - start,
                    length: hi - lo,
                });
            }
        }
        spans
    }

    /// The file spans of a whole piece.
    pub fn piece_spans(&self, piece: PieceIndex) -> Vec<FileSpan> {
        self.spans(self.piece_offset(piece), u64::from(self.piece_size(piece)))
    }

    /// The pieces that hold any byte of file `file` (empty for a zero-length file).
    pub fn file_pieces(&self, file: usize) -> std::ops::Range<u32> {
        let start = self.file_starts[file];
        let len = self.file_lengths[file];
        if len == 0 {
            return 0..0;
        }
        let pl = u64::from(self.piece_length);
        (start / pl) as u32..(start + len).div_ceil(pl) as u32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn geo(piece_length: u64, files: &[u64]) -> Geometry {
        let total: u64 = files.iter().sum();
        Geometry::new(
            piece_length,
            files.to_vec(),
            total.div_ceil(piece_length),
            false,
        )
        .unwrap()
    }

    #[test]
    fn last_piece_and_block_are_short() {
        let g = geo(32768, &[100_000]);
        assert_eq!(g.piece_count(), 4);
        assert_eq!(g.last_piece_size(), 100_000 - 3 * 32768);
        let last = g.piece(3).unwrap();
        let blocks: Vec<_> = g.blocks(last).collect();
        assert_eq!(blocks.len(), 1);
        assert_eq!(blocks[0].length, 1696);
        assert!(g.block(3, 0, 1697).is_none());
        assert!(g.block(3, 0, 1696).is_some());
        assert!(g.block(4, 0, 1).is_none());
        assert!(g.block(0, 16384, 16385).is_none());
    }

    #[test]
    fn piece_length_not_multiple_of_block() {
        let g = geo(20000, &[50000]);
        let p0: Vec<_> = g.blocks(g.piece(0).unwrap()).map(|b| b.length).collect();
        assert_eq!(p0, vec![16384, 3616]);
        assert!(Geometry::new(20000, vec![50000], 3, true).is_err());
    }

    #[test]
    fn spans_cross_files_and_skip_empty_ones() {
        let g = geo(16384, &[10000, 0, 10000, 12768]);
        let spans = g.piece_spans(g.piece(0).unwrap());
        assert_eq!(
            spans,
            vec![
                FileSpan {
                    file: 0,
                    offset: 0,
                    length: 10000
                },
                FileSpan {
                    file: 2,
                    offset: 0,
                    length: 6384
                },
            ]
        );
        let spans = g.piece_spans(g.piece(1).unwrap());
        assert_eq!(
            spans,
            vec![
                FileSpan {
                    file: 2,
                    offset: 6384,
                    length: 3616
                },
                FileSpan {
                    file: 3,
                    offset: 0,
                    length: 12768
                },
            ]
        );
        assert_eq!(g.file_pieces(1), 0..0);
        assert_eq!(g.file_pieces(2), 0..2);
    }

    #[test]
    fn piece_count_must_match() {
        let err = Geometry::new(16384, vec![16385], 1, false).unwrap_err();
        assert!(matches!(
            err,
            GeometryError::PieceCountMismatch { needed: 2, .. }
        ));
        assert!(Geometry::new(0, vec![1], 1, false).is_err());
        assert!(Geometry::new(16384, vec![0], 0, false).is_err());
    }
}
