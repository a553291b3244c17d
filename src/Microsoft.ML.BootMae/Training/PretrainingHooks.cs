using Microsoft.ML.BootMae.Modules;
using static TorchSharp.torch;

namespace Microsoft.ML.BootMae.Training;

// Test seam of BootMaePretrainer (trajectory parity against PyTorch): replaces the seeded initial weights and the drawn
// masks, and observes every step. Unset members, or no hooks at all, leave the loop exactly as it is.
internal sealed class PretrainingHooks
{
    // Runs on the network after its seeded initialisation (and InitialEncoder), before it moves to the device and
    // before the teacher copies its encoder.
    public Action<BootMaeNetwork>? InitializeNetwork { get; init; }

    // The masks of (step, batch size, device), replacing MaskingGenerator's draw; the loop disposes them.
    public Func<long, int, Device, MaskBatch>? Masks { get; init; }

    // Called at the end of each step, after the optimizer step and the EMA update.
    public Action<PretrainingStepTrace>? AfterStep { get; init; }
}

// One step as the loop ran it: the learning rate read back from the optimizer's first group, λ and the EMA momentum
// passed on (null without an EMA update), the losses, and the patches masked per image in the step's masks. Network and
// Teacher are the live modules, not copies.
internal readonly record struct PretrainingStepTrace(long Step, double LearningRate, double FeatureWeight, double? EmaMomentum,
    float Total, float? Pixel, float? Feature, BootMaeNetwork Network, MomentumTeacher? Teacher, int NumMasked = 0);
