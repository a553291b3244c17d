using Microsoft.ML.Data;
using Microsoft.ML.Transforms.Image;

namespace Microsoft.ML.BootMae;

/// <summary>
/// The ML.NET steps in front of an exported BootMAE ONNX model (<see cref="BootMaeEncoder.ExportOnnx"/>,
/// <see cref="BootMaeImageClassificationTransformer.ExportOnnx"/>). They are all ML.NET's own, so a pipeline of them
/// followed by <c>ApplyOnnxModel</c> (package Microsoft.ML.OnnxTransformer) is saved by plain <c>mlContext.Model.Save</c>
/// and loaded by <c>mlContext.Model.Load</c> in an app that references neither this package nor TorchSharp.
/// </summary>
public static class BootMaeOnnxCatalog
{
    /// <summary>
    /// <c>LoadImages → ResizeImages(ImageSize × ImageSize, Fill) → ExtractPixels</c> (defaults: planar RGB, 0..255):
    /// a <c>Vector&lt;Single, 3, ImageSize, ImageSize&gt;</c> column named as the ONNX models' input. Append
    /// <c>mlContext.Transforms.ApplyOnnxModel("features", "pixels", path)</c> for an encoder, or
    /// <c>ApplyOnnxModel(new[] { "scores", "predicted" }, new[] { "pixels" }, path)</c> for a classifier.
    /// </summary>
    /// <param name="catalog">The transforms catalog.</param>
    /// <param name="architecture">The exported network's shape (its <see cref="BootMaeArchitecture.ImageSize"/> sets the resize).</param>
    /// <param name="imageFolder">Folder the image paths are relative to (<c>null</c> for absolute paths); saved with the model.</param>
    /// <param name="imagePathColumnName">The text column of image paths.</param>
    /// <param name="pixelsColumnName">The pixel column, named as the ONNX input (<c>pixels</c>).</param>
    /// <param name="imageColumnName">The intermediate image column.</param>
    /// <returns>The three ML.NET estimators.</returns>
    /// <remarks>
    /// Images already at the network's size reach the model exactly as <c>BootMaeFeaturize</c> sees them. Other sizes
    /// are stretched by ML.NET's resize, whose filter differs from the high-quality filter of <c>BootMaeFeaturize</c>,
    /// so their features differ slightly; resize the images beforehand where bit-level agreement matters.
    /// </remarks>
    public static EstimatorChain<ImagePixelExtractingTransformer> BootMaeOnnxInput(this TransformsCatalog catalog, BootMaeArchitecture architecture,
        string? imageFolder, string imagePathColumnName = "ImagePath", string pixelsColumnName = "pixels", string imageColumnName = "Image")
    {
        ArgumentNullException.ThrowIfNull(catalog);
        ArgumentNullException.ThrowIfNull(architecture);
        architecture.Validate();
        return catalog.LoadImages(imageColumnName, imageFolder, imagePathColumnName)
            .Append(catalog.ResizeImages(imageColumnName, architecture.ImageSize, architecture.ImageSize, imageColumnName, ImageResizingEstimator.ResizingKind.Fill))
            .Append(catalog.ExtractPixels(pixelsColumnName, imageColumnName));
    }
}
