using System.Buffers.Binary;
using System.Text;

namespace Microsoft.ML.BootMae.Native;

/// <summary>What <see cref="ElfVersionPatcher.MakeVersionWeak"/> did to a file.</summary>
internal enum ElfPatchOutcome
{
    /// <summary>The entry was strong and is now weak; the file was rewritten.</summary>
    Patched,

    /// <summary>The entry was already weak; the file was not touched.</summary>
    AlreadyWeak,

    /// <summary>The file has no such version requirement; it was not touched.</summary>
    NotRequired,
}

/// <summary>One version requirement (an Elf64_Vernaux entry of <c>.gnu.version_r</c>).</summary>
internal sealed record ElfVersionRequirement(string Library, string Version, bool IsWeak, ushort Index, IReadOnlyList<string> Symbols);

/// <summary>
/// Reads and edits the symbol-version requirements of 64-bit little-endian ELF shared libraries.
/// </summary>
/// <remarks>
/// Why: LibTorchSharp 0.107.0 is linked with GCC 13 and so requires <c>GLIBCXX_3.4.32</c> for a single symbol,
/// <c>std::ios_base_library_init()</c>, a link-time marker that nothing calls. Debian 12 and Ubuntu 22.04 ship
/// libstdc++ 3.4.30, and the dynamic loader refuses the library. Setting VER_FLG_WEAK on that one requirement makes
/// the loader accept a libstdc++ without it, while every other requirement stays strong.
/// Layouts follow the System V gABI and the LSB symbol-versioning spec (Elf64_Ehdr, Elf64_Shdr, Elf64_Verneed,
/// Elf64_Vernaux, Elf64_Verdef, Elf64_Sym).
/// </remarks>
internal static class ElfVersionPatcher
{
    private const uint ShtDynSym = 11;
    private const uint ShtGnuVerDef = 0x6ffffffd;
    private const uint ShtGnuVerNeed = 0x6ffffffe;
    private const uint ShtGnuVerSym = 0x6fffffff;
    private const ushort VerFlagWeak = 0x2;

    /// <summary>Lists every version requirement of an ELF file, with the dynamic symbols bound to each.</summary>
    public static IReadOnlyList<ElfVersionRequirement> ReadRequirements(string path)
    {
        var image = new ElfImage(path, File.ReadAllBytes(path));
        return image.ReadRequirements().Select(r => r.Requirement).ToList();
    }

    /// <summary>Lists the version names an ELF library defines (its <c>.gnu.version_d</c>), e.g. GLIBCXX_3.4.30.</summary>
    public static IReadOnlySet<string> ReadDefinedVersions(string path)
    {
        var image = new ElfImage(path, File.ReadAllBytes(path));
        return image.ReadDefinitions();
    }

    /// <summary>
    /// Marks the requirement of <paramref name="version"/> from <paramref name="library"/> weak, rewriting the file
    /// atomically (a temporary file in the same folder, then a rename) so that a crash never leaves a torn library.
    /// </summary>
    /// <param name="path">The ELF shared library to patch.</param>
    /// <param name="library">The needed library's name as recorded, e.g. <c>libstdc++.so.6</c>.</param>
    /// <param name="version">The version name, e.g. <c>GLIBCXX_3.4.32</c>.</param>
    /// <param name="allowedSymbols">When given, the patch is refused unless every symbol bound to that version is in
    /// this set: a weak requirement is only safe for symbols that are never called.</param>
    /// <exception cref="InvalidDataException">The file is not a 64-bit little-endian ELF file, or is malformed.</exception>
    /// <exception cref="InvalidOperationException">A symbol outside <paramref name="allowedSymbols"/> is bound to the version.</exception>
    public static ElfPatchOutcome MakeVersionWeak(string path, string library, string version, IReadOnlySet<string>? allowedSymbols = null)
    {
        var bytes = File.ReadAllBytes(path);
        var image = new ElfImage(path, bytes);
        var match = image.ReadRequirements()
            .FirstOrDefault(r => r.Requirement.Library == library && r.Requirement.Version == version);
        if (match is null)
        {
            return ElfPatchOutcome.NotRequired;
        }

        if (match.Requirement.IsWeak)
        {
            return ElfPatchOutcome.AlreadyWeak;
        }

        if (allowedSymbols is not null)
        {
            var unsafeSymbols = match.Requirement.Symbols.Where(s => !allowedSymbols.Contains(s)).ToList();
            if (unsafeSymbols.Count > 0)
            {
                throw new InvalidOperationException(
                    $"Refusing to weaken {version} in '{path}': it binds symbols that may be called ({string.Join(", ", unsafeSymbols)}).");
            }
        }

        var flags = BinaryPrimitives.ReadUInt16LittleEndian(bytes.AsSpan(match.FlagsOffset));
        BinaryPrimitives.WriteUInt16LittleEndian(bytes.AsSpan(match.FlagsOffset), (ushort)(flags | VerFlagWeak));
        // Staged beside the library and renamed over it with its permissions, so a process loading it meanwhile sees the old or the new file.
        Persistence.DurableFiles.WriteAtomically(path, stream => stream.Write(bytes), keepUnixFileMode: true);
        return ElfPatchOutcome.Patched;
    }

    private sealed record RequirementLocation(ElfVersionRequirement Requirement, int FlagsOffset);

    private sealed record Section(uint Type, long Offset, long Size, uint Link, uint Info, long EntrySize);

    /// <summary>A bounds-checked view of an ELF file's bytes.</summary>
    private sealed class ElfImage
    {
        private readonly string _path;
        private readonly byte[] _bytes;
        private readonly List<Section> _sections = new();

        public ElfImage(string path, byte[] bytes)
        {
            _path = path;
            _bytes = bytes;
            if (bytes.Length < 64 || bytes[0] != 0x7f || bytes[1] != (byte)'E' || bytes[2] != (byte)'L' || bytes[3] != (byte)'F')
            {
                throw new InvalidDataException($"'{path}' is not an ELF file (no \\x7fELF magic).");
            }

            if (bytes[4] != 2 || bytes[5] != 1)
            {
                throw new InvalidDataException($"'{path}' is not a 64-bit little-endian ELF file (class {bytes[4]}, data {bytes[5]}); only those are supported.");
            }

            long shoff = (long)U64(0x28);
            int shentsize = U16(0x3A);
            int shnum = U16(0x3C);
            if (shentsize < 64 || shoff <= 0 || shoff + (long)shnum * shentsize > bytes.Length)
            {
                throw new InvalidDataException($"'{path}' has a malformed ELF section header table.");
            }

            for (int i = 0; i < shnum; i++)
            {
                long at = shoff + (long)i * shentsize;
                var section = new Section(U32(at + 4), (long)U64(at + 24), (long)U64(at + 32), U32(at + 40), U32(at + 44), (long)U64(at + 56));
                _sections.Add(section);
            }
        }

        public List<RequirementLocation> ReadRequirements()
        {
            var result = new List<RequirementLocation>();
            var verneed = _sections.FirstOrDefault(s => s.Type == ShtGnuVerNeed);
            if (verneed is null)
            {
                return result;
            }

            var strtab = SectionAt(verneed.Link);
            var symbolsByIndex = ReadSymbolsByVersionIndex();
            long entry = verneed.Offset;
            for (uint i = 0; i < verneed.Info; i++)
            {
                Check(entry, 16);
                int count = U16(entry + 2);
                string file = ReadString(strtab, U32(entry + 4));
                long aux = entry + U32(entry + 8);
                for (int j = 0; j < count; j++)
                {
                    Check(aux, 16);
                    ushort flags = U16(aux + 4);
                    ushort index = U16(aux + 6);
                    string name = ReadString(strtab, U32(aux + 8));
                    var symbols = symbolsByIndex.TryGetValue(index, out var list) ? list : new List<string>();
                    result.Add(new RequirementLocation(
                        new ElfVersionRequirement(file, name, (flags & VerFlagWeak) != 0, index, symbols), checked((int)(aux + 4))));
                    uint nextAux = U32(aux + 12);
                    if (nextAux == 0)
                    {
                        break;
                    }

                    aux += nextAux;
                }

                uint next = U32(entry + 12);
                if (next == 0)
                {
                    break;
                }

                entry += next;
            }

            return result;
        }

        public IReadOnlySet<string> ReadDefinitions()
        {
            var result = new HashSet<string>(StringComparer.Ordinal);
            var verdef = _sections.FirstOrDefault(s => s.Type == ShtGnuVerDef);
            if (verdef is null)
            {
                return result;
            }

            var strtab = SectionAt(verdef.Link);
            long entry = verdef.Offset;
            for (uint i = 0; i < verdef.Info; i++)
            {
                Check(entry, 20);
                long aux = entry + U32(entry + 12);
                Check(aux, 8);
                result.Add(ReadString(strtab, U32(aux)));
                uint next = U32(entry + 16);
                if (next == 0)
                {
                    break;
                }

                entry += next;
            }

            return result;
        }

        private Dictionary<ushort, List<string>> ReadSymbolsByVersionIndex()
        {
            var map = new Dictionary<ushort, List<string>>();
            var versym = _sections.FirstOrDefault(s => s.Type == ShtGnuVerSym);
            if (versym is null)
            {
                return map;
            }

            var dynsym = SectionAt(versym.Link);
            if (dynsym.Type != ShtDynSym)
            {
                return map;
            }

            var strtab = SectionAt(dynsym.Link);
            long count = dynsym.Size / 24;
            Check(versym.Offset, count * 2);
            for (long i = 0; i < count; i++)
            {
                ushort index = (ushort)(U16(versym.Offset + i * 2) & 0x7fff);
                if (index < 2)
                {
                    continue; // 0 = local, 1 = global: unversioned.
                }

                string name = ReadString(strtab, U32(dynsym.Offset + i * 24));
                if (!map.TryGetValue(index, out var list))
                {
                    map[index] = list = new List<string>();
                }

                list.Add(name);
            }

            return map;
        }

        private Section SectionAt(uint index)
        {
            if (index >= _sections.Count)
            {
                throw new InvalidDataException($"'{_path}' links to section {index}, which does not exist.");
            }

            return _sections[(int)index];
        }

        private string ReadString(Section table, uint offset)
        {
            long start = table.Offset + offset;
            Check(start, 1);
            long end = start;
            while (end < _bytes.Length && _bytes[end] != 0)
            {
                end++;
            }

            return Encoding.ASCII.GetString(_bytes, (int)start, (int)(end - start));
        }

        private void Check(long offset, long length)
        {
            if (offset < 0 || length < 0 || offset + length > _bytes.Length)
            {
                throw new InvalidDataException($"'{_path}' is truncated or malformed (offset {offset} + {length} beyond {_bytes.Length} bytes).");
            }
        }

        private ushort U16(long at)
        {
            Check(at, 2);
            return BinaryPrimitives.ReadUInt16LittleEndian(_bytes.AsSpan((int)at));
        }

        private uint U32(long at)
        {
            Check(at, 4);
            return BinaryPrimitives.ReadUInt32LittleEndian(_bytes.AsSpan((int)at));
        }

        private ulong U64(long at)
        {
            Check(at, 8);
            return BinaryPrimitives.ReadUInt64LittleEndian(_bytes.AsSpan((int)at));
        }
    }
}
