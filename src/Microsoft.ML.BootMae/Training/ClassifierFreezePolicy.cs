using Microsoft.ML.BootMae.Modules;

namespace Microsoft.ML.BootMae.Training;

/// <summary>
/// What trains in a classifier: the linear probe trains the head's Linear alone (frozen encoder, BatchNorm head);
/// fine-tuning trains everything except the fixed sin-cos position embedding and the encoder's final LN, which the
/// classifier replaces by identity, so it would get no gradient.
/// </summary>
internal static class ClassifierFreezePolicy
{
    /// <summary>Whether the parameter <paramref name="name"/> of a classifier's state_dict trains.</summary>
    public static bool Trains(string name, bool linearProbe) => linearProbe
        ? name.StartsWith("classifier.head.", StringComparison.Ordinal)
        : name != "encoder.pos_embed" && !name.StartsWith("encoder.norm.", StringComparison.Ordinal);

    /// <summary>Sets <c>requires_grad</c> of each parameter of <paramref name="model"/> by <see cref="Trains"/>.</summary>
    public static void Apply(ImageClassifier model)
    {
        foreach (var (name, parameter) in model.named_parameters())
        {
            parameter.requires_grad = Trains(name, model.IsLinearProbe);
        }
    }

    /// <summary>
    /// Turns training of the encoder's fine-tuned parameters on or off (the head's warm-up of LP-FT). Parameters
    /// without a gradient are skipped by AdamW: no update and no weight decay.
    /// </summary>
    public static void SetEncoderTrains(ImageClassifier model, bool trains)
    {
        foreach (var (name, parameter) in model.named_parameters())
        {
            if (name.StartsWith("encoder.", StringComparison.Ordinal) && Trains(name, linearProbe: false))
            {
                parameter.requires_grad = trains;
            }
        }
    }
}
