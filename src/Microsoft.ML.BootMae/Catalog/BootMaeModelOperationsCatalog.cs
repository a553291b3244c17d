using Microsoft.ML.BootMae;
using Microsoft.ML.BootMae.Persistence;

namespace Microsoft.ML;

/// <summary>
/// Saving and loading ML.NET models that contain BootMAE components. The file is an ordinary ML.NET model zip with
/// the BootMAE weights and a manifest (with SHA-256 checksums) in a <c>BootMae/</c> folder. Plain
/// <c>mlContext.Model.Save</c> refuses such models and plain <c>Model.Load</c> fails with a pointer to these methods.
/// </summary>
public static class BootMaeModelOperationsCatalog
{
    /// <summary>Saves a model (any pipeline, with or without BootMAE stages) to a file, replacing it atomically.</summary>
    /// <param name="catalog">The model operations catalog.</param>
    /// <param name="model">The fitted model.</param>
    /// <param name="inputSchema">The schema of the data the model was fitted on (or <c>null</c>).</param>
    /// <param name="filePath">The zip to write.</param>
    public static void SaveBootMae(this ModelOperationsCatalog catalog, ITransformer model, DataViewSchema? inputSchema, string filePath)
    {
        ArgumentNullException.ThrowIfNull(filePath);
        // Written beside the target and renamed into place, so a crash or an error never leaves a torn model and a
        // reader of the previous file keeps a consistent copy.
        ArgumentNullException.ThrowIfNull(catalog);
        ArgumentNullException.ThrowIfNull(model);
        var full = Path.GetFullPath(filePath);
        // WriteAtomically sweeps a crashed save's leftovers beside this target (only this library's names, only stale
        // ones), stages beside it, flushes and renames into place.
        DurableFiles.WriteAtomically(full, file =>
        {
            BootMaeRuntime.EnsureTorchLoaded();
            // ML.NET's own zip and its scratch folder are staged beside the target too, not in TMPDIR, so a crash
            // leaves them where the next save sweeps them.
            BootMaeModelArchive.Save(model, inputSchema!, file, full);
        });
    }

    /// <summary>Saves a model (any pipeline, with or without BootMAE stages) to a stream, which is left open.</summary>
    /// <param name="catalog">The model operations catalog.</param>
    /// <param name="model">The fitted model.</param>
    /// <param name="inputSchema">The schema of the data the model was fitted on (or <c>null</c>).</param>
    /// <param name="stream">A writable stream.</param>
    public static void SaveBootMae(this ModelOperationsCatalog catalog, ITransformer model, DataViewSchema? inputSchema, Stream stream)
    {
        ArgumentNullException.ThrowIfNull(catalog);
        ArgumentNullException.ThrowIfNull(model);
        ArgumentNullException.ThrowIfNull(stream);
        BootMaeRuntime.EnsureTorchLoaded();
        BootMaeModelArchive.Save(model, inputSchema!, stream);
    }

    /// <summary>Loads a model saved by <see cref="SaveBootMae(ModelOperationsCatalog, ITransformer, DataViewSchema, string)"/>.</summary>
    /// <param name="catalog">The model operations catalog.</param>
    /// <param name="filePath">The model zip.</param>
    /// <param name="inputSchema">The schema the model was saved with.</param>
    /// <returns>The model; dispose it (<c>(model as IDisposable)?.Dispose()</c>) to free the BootMAE weights.</returns>
    /// <exception cref="InvalidDataException">The file is truncated, modified or inconsistent.</exception>
    public static ITransformer LoadBootMae(this ModelOperationsCatalog catalog, string filePath, out DataViewSchema inputSchema)
    {
        ArgumentNullException.ThrowIfNull(filePath);
        using var file = File.OpenRead(filePath);
        return Load(catalog, file, $"'{filePath}'", out inputSchema);
    }

    /// <summary>Loads a model saved by <see cref="SaveBootMae(ModelOperationsCatalog, ITransformer, DataViewSchema, Stream)"/>.</summary>
    /// <param name="catalog">The model operations catalog.</param>
    /// <param name="stream">The model zip; left open.</param>
    /// <param name="inputSchema">The schema the model was saved with.</param>
    /// <returns>The model; dispose it to free the BootMAE weights.</returns>
    /// <exception cref="InvalidDataException">The data is truncated, modified or inconsistent.</exception>
    public static ITransformer LoadBootMae(this ModelOperationsCatalog catalog, Stream stream, out DataViewSchema inputSchema)
    {
        ArgumentNullException.ThrowIfNull(stream);
        return Load(catalog, stream, "stream", out inputSchema);
    }

    private static ITransformer Load(ModelOperationsCatalog catalog, Stream stream, string description, out DataViewSchema inputSchema)
    {
        ArgumentNullException.ThrowIfNull(catalog);
        BootMaeRuntime.EnsureTorchLoaded();
        var model = BootMaeModelArchive.Load(catalog, stream, description, out inputSchema);
        // The loaded stages log through this MLContext, like freshly trained ones.
        var env = BootMaeHost.TryGetEnvironment(catalog);
        foreach (var stage in model is IEnumerable<ITransformer> chain ? chain : new[] { model })
        {
            switch (stage)
            {
                case BootMaeEncoderTransformer encoder:
                    encoder.LogEnvironment = env;
                    break;
                case BootMaeImageClassificationTransformer classifier:
                    classifier.LogEnvironment = env;
                    break;
            }
        }

        return model;
    }
}
