using System.IO.Compression;
using System.Reflection;
using System.Text.Json;
using System.Text.Json.Nodes;
using Microsoft.ML.Data;

namespace Microsoft.ML.BootMae.Persistence;

/// <summary>
/// Saves and loads ML.NET models that contain BootMAE stages. ML.NET writes its zip as usual, with a CustomMapping
/// placeholder record per BootMAE stage; the weights and settings then go into a <c>BootMae/</c> folder of the same
/// zip. ML.NET opens zip entries by name only, so the extra entries do not disturb it.
/// </summary>
/// <remarks>
/// Binary format (inside the model zip):
/// <code>
/// BootMae/manifest.json   { "format": 1, "package": version, "stages": [ { "index", "kind", "entry", "length",
///                           "sha256", "config": {...} } ], "entries": { name: sha256 of every other zip entry } }
/// BootMae/stage-{i}.bin   the stage's weights (BootMaeEncoder.Save or the classifier's Save), stored uncompressed
/// </code>
/// Stages are listed in save order, which is the depth-first order of the transformer chain.
/// </remarks>
internal static class BootMaeModelArchive
{
    internal const string Folder = "BootMae/";
    internal const string ManifestEntry = Folder + "manifest.json";
    internal const int FormatVersion = 1;

    /// <summary>Largest manifest read (16 MiB; a real one is a few KB), checked before parsing so padding cannot exhaust memory.</summary>
    internal const int MaxManifestBytes = 16 << 20;

    internal const string PlainSaveMessage =
        "This model contains BootMAE components, whose weights ML.NET's Model.Save cannot store. " +
        "Save it with mlContext.Model.SaveBootMae(model, inputSchema, path) (using Microsoft.ML;) and load it with LoadBootMae.";

    private static readonly AsyncLocal<List<IBootMaeStage>?> SaveScope = new();
    private static readonly AsyncLocal<bool> LoadScope = new();

    /// <summary>True while <see cref="Load"/> runs ML.NET's loader on this logical thread.</summary>
    internal static bool IsLoading => LoadScope.Value;

    /// <summary>Called from a BootMAE transformer's <c>ICanSaveModel.Save</c>: records the stage and writes the placeholder.</summary>
    internal static void SaveStage(ModelSaveContext ctx, IBootMaeStage stage)
    {
        var stages = SaveScope.Value ?? throw new InvalidOperationException(PlainSaveMessage);
        stages.Add(stage);
        BootMaeStagePlaceholderFactory.Placeholder.Save(ctx);
    }

    /// <summary>Saves <paramref name="model"/> with its BootMAE stages to <paramref name="destination"/>.</summary>
    /// <param name="model">The model.</param>
    /// <param name="inputSchema">Its input schema.</param>
    /// <param name="destination">Where the zip goes.</param>
    /// <param name="target">The file being written, whose folder holds the staged files; null for stream saves, which
    /// have no target folder and stage in TMPDIR.</param>
    internal static void Save(ITransformer model, DataViewSchema inputSchema, Stream destination, string? target = null)
    {
        var stagingTarget = target ?? Path.Combine(Path.GetTempPath(), "bootmae-staging");
        if (target is null)
        {
            DurableFiles.SweepStale(Path.GetTempPath(), "bootmae-staging");
        }

        // ML.NET's writer keeps a scratch folder ("ml_dotnet_*") in the context's TempFilePath while it saves, which a
        // kill -9 would leave behind under a name nobody sweeps: it is redirected into a staging folder of this library.
        var temp = DurableFiles.StagingPath(stagingTarget, "mlnet");
        var scratch = DurableFiles.StagingPath(stagingTarget, "mlnetscratch");
        try
        {
            Directory.CreateDirectory(scratch);
            var stages = new List<IBootMaeStage>();
            SaveScope.Value = stages;
            try
            {
                // A context of its own only for TempFilePath: saving reads nothing else from the context.
                new MLContext { TempFilePath = scratch }.Model.Save(model, inputSchema, temp);
            }
            finally
            {
                SaveScope.Value = null;
            }

            WriteArchive(temp, stages, destination);
            destination.Flush();
        }
        finally
        {
            TryDelete(temp);
            TryDeleteFolder(scratch);
        }
    }

    // Streams ML.NET's entries into the destination zip, then the stage weights and the manifest (no in-memory zip).
    private static void WriteArchive(string mlnetZip, List<IBootMaeStage> stages, Stream destination)
    {
        using var source = ZipFile.OpenRead(mlnetZip);
        using var zip = new ZipArchive(destination, ZipArchiveMode.Create, leaveOpen: true);
        var entries = new JsonObject();
        foreach (var entry in source.Entries)
        {
            var copy = zip.CreateEntry(entry.FullName, CompressionLevel.Optimal);
            using var read = entry.Open();
            using var hashing = new HashingStream(copy.Open());
            read.CopyTo(hashing);
            entries[entry.FullName] = hashing.HashHex();
        }

        var stageList = new JsonArray();
        for (int i = 0; i < stages.Count; i++)
        {
            var name = $"{Folder}stage-{i}.bin";
            var entry = zip.CreateEntry(name, CompressionLevel.NoCompression);
            using var hashing = new HashingStream(entry.Open());
            stages[i].SaveWeights(hashing);
            stageList.Add(new JsonObject
            {
                ["index"] = i,
                ["kind"] = stages[i].StageKind,
                ["entry"] = name,
                ["length"] = hashing.Length,
                ["sha256"] = hashing.HashHex(),
                ["config"] = stages[i].GetStageConfig(),
            });
        }

        var manifest = new JsonObject
        {
            ["format"] = FormatVersion,
            ["package"] = typeof(BootMaeModelArchive).Assembly.GetCustomAttribute<AssemblyInformationalVersionAttribute>()?.InformationalVersion ?? "unknown",
            ["stages"] = stageList,
            ["entries"] = entries,
        };
        var manifestEntry = zip.CreateEntry(ManifestEntry, CompressionLevel.Optimal);
        using var writer = manifestEntry.Open();
        JsonSerializer.Serialize(writer, manifest, new JsonSerializerOptions { WriteIndented = true });
    }

    /// <summary>Loads a model saved by <see cref="Save"/> (or a plain ML.NET model without BootMAE stages).</summary>
    internal static ITransformer Load(ModelOperationsCatalog catalog, Stream source, string description, out DataViewSchema inputSchema)
    {
        // ZipArchive and ML.NET both need to seek; keep a seekable copy of unseekable streams.
        Stream seekable = source;
        MemoryStream? copy = null;
        if (!source.CanSeek)
        {
            copy = new MemoryStream();
            source.CopyTo(copy);
            copy.Position = 0;
            seekable = copy;
        }

        try
        {
            long start = seekable.Position;
            ZipArchive zip;
            try
            {
                zip = new ZipArchive(seekable, ZipArchiveMode.Read, leaveOpen: true);
            }
            catch (InvalidDataException ex)
            {
                throw new InvalidDataException($"The model {description} is truncated or is not an ML.NET model zip: {ex.Message}", ex);
            }

            using (zip)
            {
                var manifestEntry = zip.GetEntry(ManifestEntry);
                if (manifestEntry is null)
                {
                    // No BootMAE stages: an ordinary ML.NET model.
                    seekable.Position = start;
                    return catalog.Load(seekable, out inputSchema);
                }

                var manifest = BootMaeArchiveManifest.Read(manifestEntry, description);
                BootMaeArchiveManifest.Verify(zip, manifest, description);
                seekable.Position = start;
                ITransformer loaded;
                LoadScope.Value = true;
                try
                {
                    loaded = catalog.Load(seekable, out inputSchema);
                }
                finally
                {
                    LoadScope.Value = false;
                }

                var stages = (JsonArray)manifest["stages"]!;
                int next = 0;
                var result = Replace(loaded, zip, stages, ref next, description);
                if (next != stages.Count)
                {
                    throw new InvalidDataException($"The model {description} lists {stages.Count} BootMAE stages in its manifest but ML.NET's record has {next}; the file is inconsistent.");
                }

                return result;
            }
        }
        finally
        {
            copy?.Dispose();
        }
    }

    private static ITransformer Replace(ITransformer transformer, ZipArchive zip, JsonArray stages, ref int next, string description)
    {
        if (BootMaeStagePlaceholderFactory.IsPlaceholder(transformer))
        {
            if (next >= stages.Count)
            {
                throw new InvalidDataException($"The model {description} has more BootMAE placeholders than its manifest lists stages; the file is inconsistent.");
            }

            var stage = (JsonObject)stages[next++]!;
            return CreateStage(zip, stage, description);
        }

        if (transformer is TransformerChain<ITransformer> chain)
        {
            var items = chain.ToArray();
            var scopes = ScopesOf(chain, items);
            bool changed = false;
            for (int i = 0; i < items.Length; i++)
            {
                var replaced = Replace(items[i], zip, stages, ref next, description);
                changed |= !ReferenceEquals(replaced, items[i]);
                items[i] = replaced;
            }

            return changed ? new TransformerChain<ITransformer>(items, scopes) : chain;
        }

        return transformer;
    }

    // TransformerChain keeps its scopes private; recover them from the public per-scope views.
    private static TransformerScope[] ScopesOf(TransformerChain<ITransformer> chain, ITransformer[] items)
    {
        var scopes = new TransformerScope[items.Length];
        foreach (var flag in new[] { TransformerScope.Training, TransformerScope.Testing, TransformerScope.Scoring })
        {
            var members = new HashSet<ITransformer>(chain.GetModelFor(flag), ReferenceEqualityComparer.Instance);
            for (int i = 0; i < items.Length; i++)
            {
                if (members.Contains(items[i]))
                {
                    scopes[i] |= flag;
                }
            }
        }

        return scopes;
    }

    private static ITransformer CreateStage(ZipArchive zip, JsonObject stage, string description)
    {
        var kind = (string?)stage["kind"];
        var config = (JsonObject)stage["config"]!;
        var entry = zip.GetEntry((string)stage["entry"]!)!;
        using var weights = entry.Open();
        try
        {
            return kind switch
            {
                BootMaeEncoderTransformer.Kind => BootMaeEncoderTransformer.FromStage(config, weights),
                BootMaeImageClassificationTransformer.Kind => BootMaeImageClassificationTransformer.FromStage(config, weights),
                _ => throw new InvalidDataException($"unknown BootMAE stage kind '{kind}'; update Microsoft.ML.BootMae"),
            };
        }
        catch (Exception ex) when (ex is not BootMaeNativeLoadException and not OutOfMemoryException)
        {
            // The weights readers see a stream, not the file: name the model file, the stage and its entry here
            // (a crafted classifier header used to be reported without any of them).
            throw new InvalidDataException($"The model {description}: BootMAE stage {(int?)stage["index"]} ({kind}, entry '{entry.FullName}') could not be loaded: {ex.Message}", ex);
        }
    }

    /// <summary>A stage's <c>maxImagePixels</c>; models saved before it was recorded get the default.</summary>
    internal static long ReadMaxImagePixels(JsonObject config) => config["maxImagePixels"] switch
    {
        null => DataViews.ImageDecoder.DefaultMaxImagePixels,
        JsonValue v when v.TryGetValue(out long pixels) && pixels > 0 => pixels,
        var other => throw new InvalidDataException($"the stage's field 'maxImagePixels' is {other.ToJsonString()}, not a positive integer"),
    };

    /// <summary>Reads the architecture record of a stage's settings.</summary>
    internal static BootMaeArchitecture ReadArchitecture(JsonObject config) =>
        config["architecture"].Deserialize<BootMaeArchitecture>() ?? throw new InvalidDataException("the stage has no architecture");

    private static void TryDeleteFolder(string path)
    {
        try
        {
            Directory.Delete(path, recursive: true);
        }
        catch (Exception ex) when (ex is IOException or UnauthorizedAccessException)
        {
            // Swept by the next save once stale.
        }
    }

    private static void TryDelete(string path)
    {
        try
        {
            File.Delete(path);
        }
        catch (IOException)
        {
            // A leftover temp file is harmless.
        }
        catch (UnauthorizedAccessException)
        {
            // Same.
        }
    }
}
