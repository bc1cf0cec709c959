# -*- coding: utf-8 -*-
"""
@article{Simcryocluster,
title = "Simcryocluster: a semantic similarity clustering method of cryo-EM images by adopting contrastive learning",
journal = "BMC Bioinformatics",
volume = "25",
pages = "77",
year = "2024",
doi = "http://dx.doi.org/10.1186/s12859-023-05565-w",
author = "Huanrong Tang and Yaowu Wang and Jianquan Ouyang and Jinlin Wang",
}

@inproceedings{Chen2020SimCLR,
title = "A Simple Framework for Contrastive Learning of Visual Representations",
booktitle = "Proceedings of the 37th International Conference on Machine Learning (ICML)",
series = "PMLR",
volume = "119",
pages = "1597--1607",
year = "2020",
doi = "http://dx.doi.org/10.48550/arXiv.2002.05709",
author = "Ting Chen and Simon Kornblith and Mohammad Norouzi and Geoffrey Hinton",
}

@inproceedings{VanGansbeke2020SCAN,
title = "SCAN: Learning to Classify Images without Labels",
booktitle = "Computer Vision -- ECCV 2020",
pages = "268--285",
year = "2020",
doi = "http://dx.doi.org/10.1007/978-3-030-58607-2_16",
author = "Wouter Van Gansbeke and Simon Vandenhende and Stamatios Georgoulis and Marc Proesmans and Luc Van Gool",
}

@inproceedings{He2016ResNet,
title = "Deep Residual Learning for Image Recognition",
booktitle = "IEEE Conference on Computer Vision and Pattern Recognition (CVPR)",
pages = "770--778",
year = "2016",
doi = "http://dx.doi.org/10.1109/CVPR.2016.90",
author = "Kaiming He and Xiangyu Zhang and Shaoqing Ren and Jian Sun",
}
"""
