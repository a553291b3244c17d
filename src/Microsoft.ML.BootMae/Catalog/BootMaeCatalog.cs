using Microsoft.ML.BootMae;
using Microsoft.ML.BootMae.Training;

namespace Microsoft.ML;

/// <summary>
/// Catalog entry points of BootMAE: self-supervised pretraining and featurization in <see cref="TransformsCatalog"/>,
/// fine-tuning and linear probing in <see cref="MulticlassClassificationCatalog.MulticlassClassificationTrainers"/>.
/// </summary>
/// <remarks>
/// Settings that ML.NET keeps in its environment are honoured where the Options leave them unset: the MLContext's
/// seed when <c>Seed</c> is null; <c>MLContext.GpuDeviceId</c> and <c>MLContext.FallbackToCpu</c> when <c>Device</c>
/// is <c>Auto</c> and <c>GpuDeviceId</c>/<c>FallbackToCpu</c> are null; and the MLContext's cancellation
/// (<c>CancelExecution</c>, as AutoML uses it), which stops training before the next step like the Options'
/// <c>CancellationToken</c>. Save pipelines with <c>mlContext.Model.SaveBootMae</c>.
/// </remarks>
public static class BootMaeCatalog
{
    /// <summary>Pretrains a BootMAE encoder on an image column and adds its embeddings as a new column.</summary>
    /// <param name="catalog">The transforms catalog.</param>
    /// <param name="outputColumnName">The added <c>Vector&lt;Single, D&gt;</c> column.</param>
    /// <param name="imageColumnName">The image column: encoded bytes (<c>LoadRawImageBytes</c>), <c>Image</c> or a pixel vector.</param>
    /// <param name="architecture">Network shape; <c>null</c> means <see cref="BootMaeArchitecture.VitBase16"/>.</param>
    /// <param name="maxEpochs">Passes over the data. Default 100.</param>
    /// <param name="batchSize">Images per optimizer step. Default 64.</param>
    /// <returns>An estimator whose fit runs the pretraining.</returns>
    public static BootMaePretrainingEstimator BootMaePretrain(this TransformsCatalog catalog, string outputColumnName = "Features",
        string imageColumnName = "Image", BootMaeArchitecture? architecture = null, int maxEpochs = BootMaePretrainerSettings.DefaultMaxEpochs, int batchSize = BootMaePretrainerSettings.DefaultBatchSize)
    {
        ArgumentNullException.ThrowIfNull(catalog);
        return BootMaePretrain(catalog, new BootMaePretrainingEstimator.Options
        {
            OutputColumnName = outputColumnName,
            ImageColumnName = imageColumnName,
            Architecture = architecture,
            MaxEpochs = maxEpochs,
            BatchSize = batchSize,
        });
    }

    /// <summary>Pretrains a BootMAE encoder with full control of the settings.</summary>
    /// <param name="catalog">The transforms catalog.</param>
    /// <param name="options">The settings.</param>
    /// <returns>An estimator whose fit runs the pretraining.</returns>
    public static BootMaePretrainingEstimator BootMaePretrain(this TransformsCatalog catalog, BootMaePretrainingEstimator.Options options)
    {
        ArgumentNullException.ThrowIfNull(catalog);
        return new BootMaePretrainingEstimator(BootMaeHost.TryGetEnvironment(catalog), options);
    }

    /// <summary>Embeds images with a pretrained BootMAE encoder.</summary>
    /// <param name="catalog">The transforms catalog.</param>
    /// <param name="encoder">The pretrained encoder; it stays the caller's to dispose.</param>
    /// <param name="outputColumnName">The added embedding column.</param>
    /// <param name="imageColumnName">The image column: encoded bytes (<c>LoadRawImageBytes</c>), <c>Image</c> or a pixel vector.</param>
    /// <param name="pooling">Mean of patch tokens, the cls token, or every token (<c>Vector&lt;Single, N, D&gt;</c>).</param>
    /// <returns>An estimator whose fit only checks the schema.</returns>
    public static BootMaeFeaturizingEstimator BootMaeFeaturize(this TransformsCatalog catalog, BootMaeEncoder encoder,
        string outputColumnName = "Features", string imageColumnName = "Image", BootMaePooling pooling = BootMaePooling.Mean)
    {
        ArgumentNullException.ThrowIfNull(catalog);
        ArgumentNullException.ThrowIfNull(encoder);
        return BootMaeFeaturize(catalog, new BootMaeFeaturizingEstimator.Options
        {
            Encoder = encoder,
            OutputColumnName = outputColumnName,
            ImageColumnName = imageColumnName,
            Pooling = pooling,
        });
    }

    /// <summary>Embeds images with a pretrained BootMAE encoder, with full control of the settings.</summary>
    /// <param name="catalog">The transforms catalog.</param>
    /// <param name="options">The settings; <see cref="BootMaeFeaturizingEstimator.Options.Encoder"/> is required.</param>
    /// <returns>An estimator whose fit only checks the schema.</returns>
    public static BootMaeFeaturizingEstimator BootMaeFeaturize(this TransformsCatalog catalog, BootMaeFeaturizingEstimator.Options options)
    {
        ArgumentNullException.ThrowIfNull(catalog);
        return new BootMaeFeaturizingEstimator(options, BootMaeHost.TryGetEnvironment(catalog));
    }

    /// <summary>Fine-tunes a BootMAE encoder for multiclass image classification.</summary>
    /// <param name="catalog">The multiclass trainers catalog.</param>
    /// <param name="labelColumnName">The <c>Key&lt;UInt32&gt;</c> label column (use <c>MapValueToKey</c>).</param>
    /// <param name="imageColumnName">The image column: encoded bytes (<c>LoadRawImageBytes</c>), <c>Image</c> or a pixel vector.</param>
    /// <param name="scoreColumnName">The added class-probability column.</param>
    /// <param name="predictedLabelColumnName">The added predicted-label key column.</param>
    /// <param name="encoder">The pretrained encoder to start from (copied); <c>null</c> trains from a random start.</param>
    /// <param name="maxEpochs">Passes over the training data. Default 20.</param>
    /// <param name="batchSize">Images per optimizer step. Default 32.</param>
    /// <param name="validationSet">Labelled data scored after each epoch; the best epoch is returned.</param>
    /// <returns>The trainer.</returns>
    public static BootMaeImageClassificationTrainer BootMaeImageClassification(this MulticlassClassificationCatalog.MulticlassClassificationTrainers catalog,
        string labelColumnName = "Label", string imageColumnName = "Image", string scoreColumnName = "Score",
        string predictedLabelColumnName = "PredictedLabel", BootMaeEncoder? encoder = null, int maxEpochs = FineTuneSettings.DefaultMaxEpochs, int batchSize = FineTuneSettings.DefaultBatchSize,
        IDataView? validationSet = null)
    {
        ArgumentNullException.ThrowIfNull(catalog);
        return BootMaeImageClassification(catalog, new BootMaeImageClassificationTrainer.Options
        {
            LabelColumnName = labelColumnName,
            ImageColumnName = imageColumnName,
            ScoreColumnName = scoreColumnName,
            PredictedLabelColumnName = predictedLabelColumnName,
            Encoder = encoder,
            MaxEpochs = maxEpochs,
            BatchSize = batchSize,
            ValidationSet = validationSet,
        });
    }

    /// <summary>Fine-tunes (or, with <c>FreezeEncoder</c>, linear-probes) a BootMAE encoder with full control of the settings.</summary>
    /// <param name="catalog">The multiclass trainers catalog.</param>
    /// <param name="options">The settings.</param>
    /// <returns>The trainer.</returns>
    public static BootMaeImageClassificationTrainer BootMaeImageClassification(this MulticlassClassificationCatalog.MulticlassClassificationTrainers catalog,
        BootMaeImageClassificationTrainer.Options options)
    {
        ArgumentNullException.ThrowIfNull(catalog);
        return new BootMaeImageClassificationTrainer(BootMaeHost.TryGetEnvironment(catalog), options);
    }
}
