using System.IO.Compression;
using System.Security.Cryptography;
using System.Text.Json;
using System.Text.Json.Nodes;

namespace Microsoft.ML.BootMae.Persistence;

/// <summary>
/// The manifest of a model zip's <c>BootMae/</c> folder (see <see cref="BootMaeModelArchive"/>): read it with a size cap,
/// check that every field the loader reads has its JSON type, and verify every entry's SHA-256 against it, so a damaged
/// or edited file fails with a message naming the entry before anything is deserialised.
/// </summary>
internal static class BootMaeArchiveManifest
{
    internal static JsonObject Read(ZipArchiveEntry entry, string description)
    {
        try
        {
            if (entry.Length > BootMaeModelArchive.MaxManifestBytes)
            {
                throw new InvalidDataException($"{BootMaeModelArchive.ManifestEntry} declares {entry.Length} bytes, more than the {BootMaeModelArchive.MaxManifestBytes} a manifest may have");
            }

            // The declared size can lie; read at most one byte past the cap.
            using var s = entry.Open();
            var bytes = new MemoryStream();
            var buffer = new byte[81920];
            int n;
            while ((n = s.Read(buffer, 0, buffer.Length)) > 0)
            {
                bytes.Write(buffer, 0, n);
                if (bytes.Length > BootMaeModelArchive.MaxManifestBytes)
                {
                    throw new InvalidDataException($"{BootMaeModelArchive.ManifestEntry} holds more than the {BootMaeModelArchive.MaxManifestBytes} bytes a manifest may have");
                }
            }

            var manifest = JsonNode.Parse(bytes.ToArray()) as JsonObject ?? throw new InvalidDataException("the manifest is not a JSON object");
            var format = (int?)manifest["format"] ?? 0;
            if (format != BootMaeModelArchive.FormatVersion)
            {
                throw new InvalidDataException($"manifest format {format} is not supported by this version (which reads format {BootMaeModelArchive.FormatVersion}); update Microsoft.ML.BootMae");
            }

            CheckShape(manifest);
            return manifest;
        }
        catch (Exception ex) when (ex is JsonException or InvalidOperationException or FormatException or InvalidDataException)
        {
            throw new InvalidDataException($"The model {description} has an unreadable BootMAE manifest ({ex.Message}); the file is damaged.", ex);
        }
    }

    // Every field the loader reads, with its JSON type, so later casts cannot throw NullReference or InvalidCast.
    private static void CheckShape(JsonObject manifest)
    {
        if (manifest["entries"] is not JsonObject entries)
        {
            throw new InvalidDataException("field 'entries' is missing or not an object");
        }

        foreach (var (name, hash) in entries)
        {
            if (hash is not JsonValue value || !value.TryGetValue<string>(out _))
            {
                throw new InvalidDataException($"field 'entries.{name}' is not a SHA-256 string");
            }
        }

        if (manifest["stages"] is not JsonArray stages)
        {
            throw new InvalidDataException("field 'stages' is missing or not an array");
        }

        for (int i = 0; i < stages.Count; i++)
        {
            if (stages[i] is not JsonObject stage)
            {
                throw new InvalidDataException($"field 'stages[{i}]' is not an object");
            }

            foreach (var field in new[] { "kind", "entry", "sha256" })
            {
                if (stage[field] is not JsonValue value || !value.TryGetValue<string>(out _))
                {
                    throw new InvalidDataException($"field 'stages[{i}].{field}' is missing or not a string");
                }
            }

            if (stage["config"] is not JsonObject)
            {
                throw new InvalidDataException($"field 'stages[{i}].config' is missing or not an object");
            }
        }
    }

    internal static void Verify(ZipArchive zip, JsonObject manifest, string description)
    {
        var expected = new Dictionary<string, string>();
        foreach (var (name, hash) in (JsonObject)manifest["entries"]!)
        {
            expected[name] = (string)hash!;
        }

        foreach (var stage in (JsonArray)manifest["stages"]!)
        {
            expected[(string)stage!["entry"]!] = (string)stage["sha256"]!;
        }

        foreach (var (name, hash) in expected)
        {
            var entry = zip.GetEntry(name) ?? throw new InvalidDataException(
                $"The model {description} is damaged: its entry '{name}' is missing (truncated or edited file). Save the model again with SaveBootMae.");
            string actual;
            try
            {
                using var s = entry.Open();
                actual = Convert.ToHexString(SHA256.HashData(s));
            }
            catch (InvalidDataException ex)
            {
                throw new InvalidDataException($"The model {description} is damaged: entry '{name}' cannot be read ({ex.Message}).", ex);
            }

            if (!string.Equals(actual, hash, StringComparison.OrdinalIgnoreCase))
            {
                throw new InvalidDataException(
                    $"The model {description} is damaged: the SHA-256 of entry '{name}' does not match its manifest (the file was truncated or modified after saving). Save the model again with SaveBootMae.");
            }
        }
    }
}
