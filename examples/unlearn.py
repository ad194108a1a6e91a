from typing import Annotated

import torch.nn.functional as F

import weightgeo as wg


class ForgetSet(wg.Objective):
    """O(θ) = −cross-entropy on the forget set; done once its accuracy is at most `level`."""

    cost = 1  # one gradient of the network per evaluation

    def __init__(self, model, forget, level=0.05):
        self.model, self.forget, self.level = wg.FunctionalModel(model), forget, level

    def value(self, theta):
        return -F.cross_entropy(self.model(theta, self.forget.x), self.forget.y)

    def report(self, theta):
        return {"forget_accuracy": wg.evaluate(self.model, theta, self.forget)["accuracy"]}

    def done(self, theta):
        return self.report(theta)["forget_accuracy"] <= self.level


@wg.objective_application("unlearn")
def unlearn(task: wg.Task, forget_class: Annotated[int, "the label of the class to forget"] = 0) -> wg.Objective:
    """Forget one class while keeping the others (the metric is estimated on the kept inputs)."""
    task.keep(task.train.subset(task.train.y != forget_class))
    return ForgetSet(task.model, task.train.subset(task.train.y == forget_class))
